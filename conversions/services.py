"""The write side: re-trigger the postbacks of selected conversions.

Every door (API, admin action, command, background task) calls into this module.

A run that is not a dry run is first *planned*: the selection's ids are streamed once,
in order, into `RetriggerChunk` rows. Workers then claim chunks one at a time (in the
request for small runs, in `django.tasks` workers for large ones, several workers per
run), so a large run is shared out and a run whose worker died can be taken over.
"""

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from conversions.access import Actor
from conversions.criteria import Criteria
from conversions.execution import Batch, RunExecutor
from conversions.models import (
    Account,
    Conversion,
    DeliveryClaim,
    RetriggerChunk,
    RetriggerRun,
)
from conversions.recording import RunRecorder
from conversions.results import RetriggerResult, RunCounts
from conversions.selectors import check_account_scope, conversion_list, conversion_selection

logger = logging.getLogger(__name__)

ID_STREAM_BATCH = 5000


def conversions_retrigger(
    *,
    criteria: Criteria,
    actor: Actor,
    force: bool = False,
    dry_run: bool = False,
    source: str,
    background: bool | None = None,
    keep_results: bool | None = None,
    progress: Callable[[RunCounts], None] | None = None,
    processes: int = 1,
) -> RetriggerResult:
    """Re-trigger the postbacks of the conversions matching `criteria`.

    `background=None` decides by size: more than `RETRIGGER_SYNC_MAX` selected goes to
    the task queue. Raises `AccountForbidden` when the criteria name an account the
    actor does not administer.
    """
    check_account_scope(criteria, actor)
    matched = conversion_list(criteria=criteria, actor=actor).count()
    selected = max(0, min(matched - criteria.offset, criteria.limit))
    return _retrigger(
        selection=conversion_selection(criteria=criteria, actor=actor),
        info=criteria.to_info(force=force, dry_run=dry_run),
        matched=matched,
        selected=selected,
        actor=actor,
        force=force,
        dry_run=dry_run,
        source=source,
        background=background,
        keep_results=keep_results,
        progress=progress,
        processes=processes,
    )


def conversions_retrigger_queryset(
    *,
    queryset: QuerySet[Conversion],
    actor: Actor,
    force: bool = False,
    dry_run: bool = False,
    source: str,
    info: dict[str, Any] | None = None,
    background: bool | None = None,
) -> RetriggerResult:
    """The same for an already-built selection (the admin's filtered change list)."""
    queryset = scope_conversions(queryset, actor).order_by("id")
    selected = queryset.count()
    return _retrigger(
        selection=queryset,
        info={**(info or {}), "force": force, "dryRun": dry_run},
        matched=selected,
        selected=selected,
        actor=actor,
        force=force,
        dry_run=dry_run,
        source=source,
        background=background,
        keep_results=None,
        progress=None,
    )


def scope_conversions(queryset: QuerySet[Conversion], actor: Actor) -> QuerySet[Conversion]:
    if actor.admin_account_ids is None:
        return queryset
    return queryset.filter(account_id__in=actor.admin_account_ids)


def _retrigger(
    *,
    selection: QuerySet[Conversion],
    info: dict[str, Any],
    matched: int,
    selected: int,
    actor: Actor,
    force: bool,
    dry_run: bool,
    source: str,
    background: bool | None,
    keep_results: bool | None,
    progress: Callable[[RunCounts], None] | None,
    processes: int = 1,
) -> RetriggerResult:
    if background is None:
        background = not dry_run and selected > settings.RETRIGGER_SYNC_MAX
    if keep_results is None:
        keep_results = not background

    if dry_run:
        recorder = RunRecorder(run=None)
        executor = RunExecutor(
            run=None,
            force=force,
            dry_run=True,
            keep_results=keep_results,
            recorder=recorder,
            progress=progress,
        )
        results = executor.execute(Batch(ids) for ids in _id_batches(selection))
        counts = recorder.counts
        counts.matched, counts.selected = matched, selected
        return RetriggerResult(info=info, run=None, counts=counts, results=results, dry_run=True)

    run = _run_create(
        selection=selection,
        info=info,
        matched=matched,
        selected=selected,
        actor=actor,
        force=force,
        source=source,
    )
    if background:
        from conversions.tasks import enqueue_run_workers

        enqueue_run_workers(run)
        run.refresh_from_db()
        return RetriggerResult(info=info, run=run, counts=RunCounts.from_run(run), results=None)

    try:
        if processes > 1 and not keep_results:
            from conversions.forking import run_work_in_processes

            run_work_in_processes(run=run, processes=processes, progress=progress)
            results = None
        else:
            results = run_work(run=run, keep_results=keep_results, progress=progress)
    except KeyboardInterrupt:
        _cancel_interrupted(run)
        raise
    run.refresh_from_db()
    return RetriggerResult(
        info=info, run=run, counts=RunCounts.from_run(run), results=results or []
    )


def _id_batches(selection: QuerySet[Conversion]) -> Iterator[list[int]]:
    """The selection's ids in order, a chunk at a time, never all in memory."""
    size = settings.RETRIGGER_CHUNK_SIZE
    batch: list[int] = []
    for pk in selection.values_list("id", flat=True).iterator(chunk_size=ID_STREAM_BATCH):
        batch.append(pk)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _run_create(
    *,
    selection: QuerySet[Conversion],
    info: dict[str, Any],
    matched: int,
    selected: int,
    actor: Actor,
    force: bool,
    source: str,
) -> RetriggerRun:
    """Store the run and its chunks; the selection is fixed from here on."""
    run = RetriggerRun.objects.create(
        created_by=actor.user,
        actor=actor.label,
        source=source,
        criteria=info,
        force=force,
        matched=matched,
        selected=selected,
        scope_account_ids=(
            None if actor.admin_account_ids is None else sorted(actor.admin_account_ids)
        ),
    )
    try:
        pending: list[RetriggerChunk] = []
        stored = 0
        for seq, ids in enumerate(_id_batches(selection)):
            pending.append(RetriggerChunk(run=run, seq=seq, conversion_ids=ids))
            stored += len(ids)
            if len(pending) >= 20:
                RetriggerChunk.objects.bulk_create(pending)
                pending = []
        RetriggerChunk.objects.bulk_create(pending)
        accounts = Account.objects.filter(pk__in=selection.values("account_id"))
        run.accounts.set(accounts.values_list("pk", flat=True))
        # The stored chunk sizes are the truth if rows changed between count and stream.
        run.selected = stored
    except KeyboardInterrupt:
        _cancel_interrupted(run)  # no run is left queued without its chunks
        raise
    run.planned = True
    run.save(update_fields=["selected", "planned"])
    return run


# -- workers ---------------------------------------------------------------------------
#
# Exactly once, and what a crash can cost. A pair (conversion, postback) of a run is
# fired by the worker holding its chunk, and its outcome is written, with its attempts,
# by the next flush (every WORKER_FLUSH_SECONDS; attempts, counted conversions and
# counters in one transaction). A worker that takes a chunk over after a crash skips
# every conversion counted in `RunItem` and reuses every pair with a final attempt of
# this run, so nothing recorded is fired again. What the dead worker had sent but not
# yet recorded (requests in the air, answers of the last flush interval) is fired again
# with the same `{event_id}`: the only possible duplicates, which a receiver can drop.
# The run's `DeliveryClaim` rows outlive the crash, so no other run fires those pairs
# in the meantime (`in_progress`).

WORKER_FLUSH_SECONDS = 0.1
CLAIM_CANDIDATES = 5
# Seconds after which a run that never finished planning is failed by the sweeper.
PLANNING_ABANDONED_AFTER = 3600


def run_share_workers(run: RetriggerRun, wanted: int) -> int:
    """Record how many workers share `run`: `wanted`, but at most one a chunk and one a
    connection of the per-host cap (each keeps to `cap // workers`, never below one)."""
    workers = max(1, min(wanted, run.chunks.count(), max(1, settings.POSTBACK_HOST_CONCURRENCY)))
    RetriggerRun.objects.filter(pk=run.pk).update(workers=workers)
    run.workers = workers
    return workers


def worker_name() -> str:
    # Unique per call: two workers in one process must not mistake each other's chunks.
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def run_work(
    *,
    run: RetriggerRun,
    keep_results: bool = False,
    progress: Callable[[RunCounts], None] | None = None,
) -> list | None:
    """Claim and process chunks of `run` until none is left; finish the run if last."""
    from conversions.delivery.engine import DeliveryEngine, EngineSettings

    if not _run_start(run):
        return [] if keep_results else None
    worker = worker_name()
    recorder = RunRecorder(run=run, worker=worker)
    recorder.counts.matched, recorder.counts.selected = run.matched, run.selected
    executor = RunExecutor(
        run=run,
        force=run.force,
        dry_run=False,
        keep_results=keep_results,
        recorder=recorder,
        progress=progress,
        # Short flushes keep the window of fired-but-unrecorded pairs (what a crash can
        # fire twice) small; each flush is one small transaction.
        engine=DeliveryEngine(
            EngineSettings.from_settings(share_of=run.workers), tick=WORKER_FLUSH_SECONDS
        ),
    )
    try:
        results = executor.execute(_claimed_batches(run, worker, executor))
    except KeyboardInterrupt:
        # An operator's Ctrl-C on a foreground run means stop, not "let a worker finish
        # it later": the run is cancelled like through the API, after what was answered
        # is recorded and the claims of what was not fired are dropped.
        _discard_interrupted_connection()
        RetriggerRun.objects.filter(pk=run.pk).update(cancel_requested=True)
        executor.record_after_interrupt()
        executor.release_claims()
        _run_finish(run, RetriggerRun.Status.CANCELLED)
        raise
    except Exception as exc:
        logger.exception("run %s failed", run.pk)
        # The other workers of the run stop at their next flush, as on a cancel.
        RetriggerRun.objects.filter(pk=run.pk).update(cancel_requested=True)
        executor.release_claims()
        _run_finish(run, RetriggerRun.Status.FAILED, error=f"{type(exc).__name__}: {exc}")
        raise
    if executor.lost:
        # Another worker owns our chunk now and finishes the run.
        return results
    if executor.cancelled:
        executor.release_claims()
        _run_finish(run, RetriggerRun.Status.CANCELLED)
    elif not run.chunks.exclude(status=RetriggerChunk.Status.DONE).exists():
        _run_finish(run, RetriggerRun.Status.COMPLETED)
    return results


def _cancel_interrupted(run: RetriggerRun) -> None:
    """Ctrl-C anywhere between creating a run and its end leaves it cancelled.

    Every worker of this run (this process and the ones it forked) has stopped by now,
    so none of its claims guards a pair in flight. An interrupt that lands between a
    claim's statement and the worker's note of it leaves claims no worker knows of:
    they go here, or later runs would skip those pairs as `in_progress`.
    """
    _discard_interrupted_connection()
    RetriggerRun.objects.filter(pk=run.pk).update(cancel_requested=True)
    _run_finish(run, RetriggerRun.Status.CANCELLED)
    DeliveryClaim.objects.filter(run=run).delete()


def _discard_interrupted_connection() -> None:
    """Ctrl-C can land while a query is on the wire, leaving the connection mid-command
    ("another command is already in progress"): start the clean-up on a fresh one."""
    if not connection.in_atomic_block:
        connection.close()


def _run_start(run: RetriggerRun) -> bool:
    now = timezone.now()
    RetriggerRun.objects.filter(pk=run.pk, status=RetriggerRun.Status.QUEUED).update(
        status=RetriggerRun.Status.RUNNING, started_at=now, heartbeat_at=now
    )
    run.refresh_from_db()
    if run.cancel_requested and not run.is_final:
        _run_finish(run, RetriggerRun.Status.CANCELLED)
    return run.status == RetriggerRun.Status.RUNNING


def _claimed_batches(run: RetriggerRun, worker: str, executor: RunExecutor) -> Iterator[Batch]:
    while not executor.cancelled:
        chunk = _chunk_claim(run, worker)
        if chunk is None:
            return
        yield Batch(chunk.conversion_ids, chunk_id=chunk.pk)


def _chunk_claim(run: RetriggerRun, worker: str) -> RetriggerChunk | None:
    """Take the next pending chunk, or one whose worker stopped beating.

    A compare-and-set update on (status, heartbeat), so it works the same on SQLite and
    PostgreSQL and two workers never take the same chunk. Losing every candidate to
    other workers means they made progress: look again rather than give up while
    claimable chunks are left.
    """
    while True:
        stale_before = timezone.now() - timedelta(seconds=settings.RETRIGGER_HEARTBEAT_STALE)
        claimable = run.chunks.filter(
            Q(status=RetriggerChunk.Status.PENDING)
            | (
                Q(status=RetriggerChunk.Status.RUNNING)
                & (Q(heartbeat_at__lt=stale_before) | Q(heartbeat_at__isnull=True))
                & ~Q(worker=worker)
            )
        ).order_by("seq")
        candidates = list(claimable.only("pk", "status", "heartbeat_at")[:CLAIM_CANDIDATES])
        if not candidates:
            return None
        for chunk in candidates:
            taken = RetriggerChunk.objects.filter(
                pk=chunk.pk, status=chunk.status, heartbeat_at=chunk.heartbeat_at
            ).update(
                status=RetriggerChunk.Status.RUNNING, worker=worker, heartbeat_at=timezone.now()
            )
            if taken:
                if chunk.status == RetriggerChunk.Status.RUNNING:
                    logger.warning("run %s: taking over chunk %s", run.pk, chunk.pk)
                return RetriggerChunk.objects.get(pk=chunk.pk)


def _run_finish(run: RetriggerRun, status: str, *, error: str = "") -> None:
    with transaction.atomic():
        updated = RetriggerRun.objects.filter(
            pk=run.pk, status__in=[RetriggerRun.Status.QUEUED, RetriggerRun.Status.RUNNING]
        ).update(status=status, finished_at=timezone.now(), error=error[:2000])
        # Once every chunk is done nothing of this run is in flight; on a cancel or a
        # failure each worker drops its own claims as it stops (see release_claims),
        # so pairs a sibling still has in flight stay claimed until they finish.
        if updated and status == RetriggerRun.Status.COMPLETED:
            DeliveryClaim.objects.filter(run=run).delete()
    run.refresh_from_db()


# -- reading and cancelling runs ----------------------------------------------------------


def runs_visible_to(actor: Actor) -> QuerySet[RetriggerRun]:
    """Runs an actor may read: their own, or (admins) runs touching only their accounts."""
    runs = RetriggerRun.objects.all()
    if actor.admin_account_ids is None:
        return runs
    own = Q(created_by=actor.user) if actor.user is not None else Q(pk__in=[])
    foreign = RetriggerRun.accounts.through.objects.exclude(
        account_id__in=actor.admin_account_ids
    ).values("retriggerrun_id")
    touching_mine = Q(accounts__in=actor.admin_account_ids) & ~Q(pk__in=foreign)
    return runs.filter(own | touching_mine).distinct()


def run_get_for_actor(*, run_id: int, actor: Actor) -> RetriggerRun:
    """The run, or `RetriggerRun.DoesNotExist` when the actor may not see it."""
    return runs_visible_to(actor).get(pk=run_id)


CANCEL_WAIT_SECONDS = 5.0


def run_cancel(*, run: RetriggerRun, actor: Actor) -> RetriggerRun:
    """Stop a run: pairs not yet fired stay unfired. A finished run is left as it is.

    Workers see the request at their next flush (every `WORKER_FLUSH_SECONDS`); the
    answer waits (briefly) until a worker has acknowledged it, so that once a client
    reads `cancelled` no further pair is started.
    """
    RetriggerRun.objects.filter(
        pk=run.pk, status__in=[RetriggerRun.Status.QUEUED, RetriggerRun.Status.RUNNING]
    ).update(cancel_requested=True)
    run.refresh_from_db()
    if run.status == RetriggerRun.Status.QUEUED:
        _run_finish(run, RetriggerRun.Status.CANCELLED)
    deadline = time.monotonic() + CANCEL_WAIT_SECONDS
    while not run.is_final and time.monotonic() < deadline:
        time.sleep(WORKER_FLUSH_SECONDS / 2)
        run.refresh_from_db()
    if run.is_final:
        # Sibling workers of the run stop at their next flush too.
        time.sleep(WORKER_FLUSH_SECONDS * 2)
    return run


def runs_recover_stale() -> list[int]:
    """Re-enqueue workers for runs whose every worker stopped beating (a crash).

    Called every few seconds by every worker process (`tasks.stale_run_sweeper`). A run
    is stale when nothing beat its heartbeat for `RETRIGGER_HEARTBEAT_STALE` seconds:
    running with all its workers dead, or queued with its tasks lost. A run whose
    worker tasks are still waiting in the queue is left alone (they will take it), so a
    busy queue does not fill up with copies. The heartbeat is bumped by compare-and-set
    first, so of several sweepers only one enqueues for a given run.
    """
    from conversions.tasks import enqueue_run_workers, run_workers_waiting

    now = timezone.now()
    stale_before = now - timedelta(seconds=settings.RETRIGGER_HEARTBEAT_STALE)
    # A run still unplanned long after it was created lost the process that planned it.
    RetriggerRun.objects.filter(
        status=RetriggerRun.Status.QUEUED,
        planned=False,
        created_at__lt=now - timedelta(seconds=PLANNING_ABANDONED_AFTER),
    ).update(
        status=RetriggerRun.Status.FAILED,
        finished_at=now,
        error="The process planning this run stopped before it finished.",
    )
    beat_is_stale = Q(heartbeat_at__isnull=True) | Q(heartbeat_at__lt=stale_before)
    # Claims left by workers that died while their run was being cancelled or failed.
    DeliveryClaim.objects.filter(
        Q(run__heartbeat_at__isnull=True) | Q(run__heartbeat_at__lt=stale_before),
        run__status__in=RetriggerRun.FINAL_STATUSES,
    ).delete()
    stale = RetriggerRun.objects.filter(
        Q(status=RetriggerRun.Status.RUNNING)
        | Q(status=RetriggerRun.Status.QUEUED, created_at__lt=stale_before),
        beat_is_stale,
        planned=True,
    ).only("pk", "heartbeat_at")
    recovered = []
    for run in stale:
        if run_workers_waiting(run.pk):
            continue
        claimed = RetriggerRun.objects.filter(pk=run.pk, heartbeat_at=run.heartbeat_at).update(
            heartbeat_at=timezone.now()
        )
        if claimed:
            logger.warning("run %s stopped beating; enqueuing workers to take it over", run.pk)
            enqueue_run_workers(run)
            recovered.append(run.pk)
    return recovered
