"""A foreground run's work spread over several processes of this machine.

One Python process delivers on one core (the GIL), and past about a thousand postbacks a
second the delivery path is CPU-bound: HTTP on the event loop, preparing and recording
on the scheduler thread. A run is already cut into chunks that workers claim one at a
time (`services.run_work`), so more processes are simply more workers of the same run,
and this module forks them for the foreground command:

- each process keeps to its share of `POSTBACK_HOST_CONCURRENCY` (`run.workers`), so
  together they keep to the cap;
- the fork happens before any thread or event loop of the run exists, with the database
  connections closed, so each child opens its own;
- Ctrl-C reaches the whole foreground process group: every process cancels the run, as
  a single one does;
- a child killed before the run is finished is a worker lost: once every process is
  done, the chunks still running go back to pending and the parent works them off,
  skipping what was counted.

POSIX only (`os.fork`); elsewhere, and inside a database transaction (whose rows the
children could not see), the run stays in this process.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Callable

from django.db import connection, connections

from conversions.models import RetriggerChunk, RetriggerRun
from conversions.results import RunCounts

logger = logging.getLogger(__name__)

PROGRESS_SECONDS = 0.5


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def processes_for(requested: int) -> int:
    """1 where forking is impossible or wrong (no fork; inside a transaction, whose rows
    the children could not see), else `requested`."""
    if requested <= 1 or not hasattr(os, "fork") or connection.in_atomic_block:
        return 1
    return requested


def run_work_in_processes(
    *,
    run: RetriggerRun,
    processes: int,
    progress: Callable[[RunCounts], None] | None = None,
) -> None:
    """`services.run_work` in `processes` processes (this one included); returns when
    all are done."""
    from conversions.services import run_share_workers, run_work

    processes = run_share_workers(run, processes_for(processes))
    if processes == 1:
        run_work(run=run, progress=progress)
        return

    shown = _run_progress(run, progress)
    connections.close_all()
    sys.stdout.flush()
    sys.stderr.flush()
    children: set[int] = set()
    # A stop signal during os.fork would raise inside the after-fork hooks (logging
    # re-initialises its locks there) and leave a lock held: the command hung. The
    # signals wait until every child is forked; one sent meanwhile then stops this
    # process, which asks the children to stop (below).
    blocked = _block_stop_signals()
    try:
        for _ in range(processes - 1):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child's coverage is not collected
                _unblock(blocked)
                os._exit(_child(run))
            children.add(pid)
        _unblock(blocked)  # inside the try: a signal waiting now stops the children too
        run_work(run=run, progress=shown)
        if _wait(children, shown) and _unfinished(run):
            # Every process of the run is done: what is still running was a killed
            # child's. Pending again, it is finished here.
            RetriggerChunk.objects.filter(run=run, status=RetriggerChunk.Status.RUNNING).update(
                status=RetriggerChunk.Status.PENDING, heartbeat_at=None
            )
            # This process is the run's only worker now: the whole cap is its share.
            RetriggerRun.objects.filter(pk=run.pk).update(workers=1)
            run.workers = 1
            run_work(run=run, progress=shown)
    except BaseException:
        # Ctrl-C, or this process failed (the run is failed then): the children stop at
        # their next flush, and none is left running behind the command.
        _unblock(blocked)
        RetriggerRun.objects.filter(pk=run.pk).update(cancel_requested=True)
        _wait(children, None)
        raise
    run.refresh_from_db()


# Ctrl-C, `kill`/`timeout`/a service manager, a closed terminal: each stops a run.
STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")


def _block_stop_signals() -> set[int]:
    wanted = {getattr(signal, name) for name in STOP_SIGNALS if hasattr(signal, name)}
    if not hasattr(signal, "pthread_sigmask"):
        return set()
    signal.pthread_sigmask(signal.SIG_BLOCK, wanted)
    return wanted


def _unblock(blocked: set[int]) -> None:
    if blocked:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, blocked)


def _child(run: RetriggerRun) -> int:
    from conversions.services import run_work

    try:
        run_work(run=run)
    except KeyboardInterrupt:
        return 130
    except BaseException:
        logger.exception("run %s: worker process %s failed", run.pk, os.getpid())
        return 1
    finally:
        connections.close_all()
        sys.stdout.flush()
        sys.stderr.flush()
    return 0


def _wait(children: set[int], progress: Callable[[RunCounts], None] | None) -> bool:
    """Reap every child; True when one of them was killed (ended by a signal)."""
    lost = False
    while children:
        for pid in list(children):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                children.discard(pid)
                if os.WIFSIGNALED(status):
                    logger.warning("worker process %s was killed", pid)
                    lost = True
        if children:
            if progress is not None:
                progress(RunCounts())
            time.sleep(0.05)
    return lost


def _unfinished(run: RetriggerRun) -> bool:
    run.refresh_from_db()
    return not run.is_final and not run.cancel_requested


def _run_progress(
    run: RetriggerRun, progress: Callable[[RunCounts], None] | None
) -> Callable[[RunCounts], None] | None:
    """Progress of the whole run (every process), read from its row twice a second."""
    if progress is None:
        return None
    last = 0.0

    def show(_own: RunCounts) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= PROGRESS_SECONDS:
            last = now
            row = RetriggerRun.objects.filter(pk=run.pk).first()
            if row is not None:
                progress(RunCounts.from_run(row))

    return show
