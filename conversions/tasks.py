"""Background entry points on Django's task framework, each a thin call into services.

The same tasks run on whichever backend `TASKS` names: django-tasks-db (`db_worker`) by
default, RQ on Redis (`rqworker`) with `TASKS_BACKEND=rq`. Nothing here depends on the
backend except `run_workers_waiting`, which the stale-run sweeper uses to avoid piling
up tasks for a run whose workers are merely waiting in the queue.
"""

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.tasks import task, task_backends

from conversions.models import RetriggerRun

logger = logging.getLogger(__name__)

# How many queued RQ jobs the sweeper looks through for a run's waiting workers.
RQ_SCAN_LIMIT = 10_000


@task()
def retrigger_run_work(run_id: int) -> dict:
    """Work on a run's chunks until none is left (several of these share one run)."""
    from conversions.services import run_work

    run = RetriggerRun.objects.filter(pk=run_id).first()
    if run is None:  # deleted while its workers were queued
        return {"run": run_id, "status": "missing", "processed": 0}
    run_work(run=run)
    run.refresh_from_db()
    return {"run": run.pk, "status": run.status, "processed": run.processed}


@task()
def retrigger_recover_stale() -> list[int]:
    from conversions.services import runs_recover_stale

    return runs_recover_stale()


def enqueue_run_workers(run: RetriggerRun) -> None:
    """Enqueue enough workers to share the run's chunks, at most the configured count.

    The count is stored on the run: each worker then keeps to its share of
    `POSTBACK_HOST_CONCURRENCY`, so all of them together keep to the cap.

    Enqueued once the surrounding transaction (if any) commits: a worker on another
    backend than the database (RQ) could otherwise start before the run's rows exist.
    """
    from conversions.services import run_share_workers

    count = run_share_workers(run, settings.RETRIGGER_WORKERS_PER_RUN)
    run_id = run.pk

    def enqueue() -> None:
        for _ in range(count):
            retrigger_run_work.enqueue(run_id)

    transaction.on_commit(enqueue)


def run_workers_waiting(run_id: int) -> bool:
    """True when a worker task for the run is queued and not started yet.

    A task that was started and whose process died is not waiting: on the database
    backend its row stays `RUNNING` for ever, on RQ the job sits in the started registry.
    Unknown backends answer False, so the sweeper errs towards enqueuing.
    """
    backend = task_backends[retrigger_run_work.backend]
    path = f"{retrigger_run_work.module_path}"
    if type(backend).__module__.startswith("django_tasks_db"):
        from django_tasks_db.models import DBTaskResult

        return (
            DBTaskResult.objects.ready()
            .filter(task_path=path, args_kwargs__args__0=run_id)
            .exists()
        )
    if type(backend).__module__.startswith("django_tasks_rq"):
        import django_rq

        queue = django_rq.get_queue(retrigger_run_work.queue_name)
        for job_id in queue.get_job_ids(0, RQ_SCAN_LIMIT):
            job = queue.fetch_job(job_id)
            if job is not None and job.func_name == path and list(job.args) == [run_id]:
                return True
        return False
    return False


@contextmanager
def stale_run_sweeper(interval: float | None = None) -> Iterator[threading.Thread]:
    """A daemon thread that takes over runs whose workers stopped beating, while open.

    Every worker process runs one, so a run is recovered as long as any worker lives;
    `runs_recover_stale` makes sure only one of them enqueues for a given run.
    """
    from conversions.services import runs_recover_stale

    if interval is None:
        interval = max(1.0, settings.RETRIGGER_HEARTBEAT_STALE / 3)
    stop = threading.Event()

    def sweep() -> None:
        while not stop.is_set():
            try:
                close_old_connections()
                recovered = runs_recover_stale()
                if recovered:
                    logger.warning("took over stale runs %s", recovered)
            except Exception:
                logger.exception("stale-run sweep failed")
            finally:
                connection.close()
            stop.wait(interval)

    thread = threading.Thread(target=sweep, name="stale-run-sweeper", daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        stop.set()
