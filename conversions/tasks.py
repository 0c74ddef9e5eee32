"""Background entry points on Django's task framework, each a thin call into services."""

import logging

from django.conf import settings
from django.tasks import task

from conversions.models import RetriggerRun

logger = logging.getLogger(__name__)


@task()
def retrigger_run_work(run_id: int) -> dict:
    """Work on a run's chunks until none is left (several of these share one run)."""
    from conversions.services import run_work

    run = RetriggerRun.objects.get(pk=run_id)
    run_work(run=run)
    run.refresh_from_db()
    return {"run": run.pk, "status": run.status, "processed": run.processed}


@task()
def retrigger_recover_stale() -> list[int]:
    from conversions.services import runs_recover_stale

    return runs_recover_stale()


def enqueue_run_workers(run: RetriggerRun) -> None:
    """Enqueue enough workers to share the run's chunks, at most the configured count."""
    chunks = run.chunks.count()
    for _ in range(max(1, min(settings.RETRIGGER_WORKERS_PER_RUN, chunks))):
        retrigger_run_work.enqueue(run.pk)
