"""Background plumbing in one process: enqueuing workers, chunk claims, stale-run recovery.

The worker processes themselves are exercised in test_workers.py; these tests pin the
rules those processes rely on, on the real database (the default database backend of
django-tasks-db stores the queued tasks in it).
"""

from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from conversions import services
from conversions.access import COMMAND_LINE_ACTOR
from conversions.criteria import parse_criteria
from conversions.models import RetriggerChunk, RetriggerRun
from conversions.services import conversions_retrigger, run_work, runs_recover_stale
from conversions.tasks import enqueue_run_workers, retrigger_run_work, run_workers_waiting
from tests import factories as f

pytestmark = pytest.mark.django_db(transaction=True)

LONG_AGO = timedelta(minutes=10)


@pytest.fixture
def queued_run(settings):
    """A background run of 5 conversions in 3 chunks, with its 3 worker tasks queued."""
    settings.RETRIGGER_SYNC_MAX = 1
    settings.RETRIGGER_CHUNK_SIZE = 2
    settings.RETRIGGER_WORKERS_PER_RUN = 4
    settings.RETRIGGER_HEARTBEAT_STALE = 30
    affiliate = f.make_affiliate(f.make_account())
    f.make_postback(affiliate, "http://127.0.0.1:9/pb?e={event_id}")
    for _ in range(5):
        f.make_conversion(affiliate)
    result = conversions_retrigger(
        criteria=parse_criteria({}), actor=COMMAND_LINE_ACTOR, source=RetriggerRun.Source.API
    )
    assert result.queued
    return result.run


def waiting_tasks(run: RetriggerRun) -> int:
    return (
        DBTaskResult.objects.ready()
        .filter(task_path=retrigger_run_work.module_path, args_kwargs__args__0=run.pk)
        .count()
    )


def as_crashed(run: RetriggerRun, *, status: str = "running") -> None:
    """The run's worker tasks were taken and their process died long ago."""
    DBTaskResult.objects.filter(args_kwargs__args__0=run.pk).update(status="RUNNING")
    RetriggerRun.objects.filter(pk=run.pk).update(
        status=status,
        heartbeat_at=timezone.now() - LONG_AGO,
        created_at=timezone.now() - LONG_AGO,
    )


def test_a_queued_run_has_one_worker_task_per_chunk_up_to_the_setting(queued_run):
    assert queued_run.chunks.count() == 3
    assert waiting_tasks(queued_run) == 3
    assert run_workers_waiting(queued_run.pk)


def test_workers_are_enqueued_only_when_the_transaction_commits(queued_run):
    # given a run with no waiting task
    DBTaskResult.objects.all().delete()

    # when workers are enqueued inside a transaction
    with transaction.atomic():
        enqueue_run_workers(queued_run)
        inside = waiting_tasks(queued_run)

    # then they appear only after the commit (an RQ worker cannot race the run's rows)
    assert (inside, waiting_tasks(queued_run)) == (0, 3)


def test_a_run_whose_workers_died_is_enqueued_again_once(queued_run):
    # given a running run nobody beats any more, none of its tasks waiting
    as_crashed(queued_run)
    assert not run_workers_waiting(queued_run.pk)

    # when two sweepers look, one after the other
    first = runs_recover_stale()
    second = runs_recover_stale()

    # then only the first enqueued workers, and it beat the heartbeat for the others
    assert (first, second) == ([queued_run.pk], [])
    assert waiting_tasks(queued_run) == 3
    queued_run.refresh_from_db()
    assert queued_run.heartbeat_at > timezone.now() - timedelta(seconds=5)


def test_a_stale_run_whose_workers_are_still_queued_is_left_alone(queued_run):
    # given a run stale for a long time whose tasks wait behind other work
    RetriggerRun.objects.filter(pk=queued_run.pk).update(
        status="running", heartbeat_at=timezone.now() - LONG_AGO
    )

    # when / then: no copies pile up in the queue
    assert runs_recover_stale() == []
    assert waiting_tasks(queued_run) == 3


def test_a_run_that_beats_is_left_alone(queued_run):
    as_crashed(queued_run)
    RetriggerRun.objects.filter(pk=queued_run.pk).update(heartbeat_at=timezone.now())

    assert runs_recover_stale() == []
    assert waiting_tasks(queued_run) == 0


def test_a_queued_run_whose_tasks_were_lost_is_enqueued_again(queued_run):
    as_crashed(queued_run, status="queued")
    RetriggerRun.objects.filter(pk=queued_run.pk).update(heartbeat_at=None)

    assert runs_recover_stale() == [queued_run.pk]
    assert waiting_tasks(queued_run) == 3


def test_finished_runs_are_never_recovered(queued_run):
    as_crashed(queued_run, status="cancelled")

    assert runs_recover_stale() == []


def test_a_run_never_planned_fails_after_a_long_time(queued_run):
    # given a run whose planning process died an hour ago
    RetriggerRun.objects.filter(pk=queued_run.pk).update(
        planned=False,
        created_at=timezone.now() - timedelta(seconds=services.PLANNING_ABANDONED_AFTER + 1),
    )

    # when
    runs_recover_stale()

    # then
    queued_run.refresh_from_db()
    assert queued_run.status == "failed" and queued_run.error


def test_two_workers_never_claim_the_same_chunk(queued_run):
    # when two workers claim in turns until nothing is left
    claimed = []
    for worker in ["a", "b", "a", "b"]:
        chunk = services._chunk_claim(queued_run, worker)
        if chunk is not None:
            claimed.append((worker, chunk.pk))

    # then every chunk went to exactly one of them
    assert len(claimed) == 3
    assert len({pk for _, pk in claimed}) == 3
    assert set(RetriggerChunk.objects.values_list("status", flat=True)) == {"running"}


def test_a_chunk_whose_worker_stopped_beating_is_taken_over(queued_run, settings):
    # given every chunk held by worker a, one of them stale
    while services._chunk_claim(queued_run, "a") is not None:
        pass
    stale = RetriggerChunk.objects.filter(run=queued_run).order_by("seq").last()
    RetriggerChunk.objects.filter(pk=stale.pk).update(heartbeat_at=timezone.now() - LONG_AGO)

    # when worker b looks for work, twice
    taken = services._chunk_claim(queued_run, "b")
    again = services._chunk_claim(queued_run, "b")

    # then it took the stale chunk only
    assert taken.pk == stale.pk and taken.worker == "b"
    assert again is None


def test_a_failing_worker_fails_the_run_and_stops_its_siblings(queued_run, monkeypatch):
    # given a worker that breaks while claiming
    def broken(run, worker):
        raise RuntimeError("database went away")

    monkeypatch.setattr(services, "_chunk_claim", broken)

    # when
    with pytest.raises(RuntimeError):
        run_work(run=queued_run)

    # then the run failed with the reason, and other workers see the stop flag
    queued_run.refresh_from_db()
    assert queued_run.status == "failed" and "database went away" in queued_run.error
    assert queued_run.cancel_requested


def test_a_task_for_a_deleted_run_ends_quietly(queued_run):
    run_id = queued_run.pk
    queued_run.delete()

    assert retrigger_run_work.call(run_id)["status"] == "missing"


def test_the_workers_of_a_run_share_the_per_host_cap(queued_run, settings):
    from conversions.delivery.engine import EngineSettings

    # 3 chunks, 4 workers allowed: 3 workers, each with a third of the cap of 8
    queued_run.refresh_from_db()
    assert queued_run.workers == 3
    assert EngineSettings.from_settings(share_of=queued_run.workers).host_concurrency == 2

    # a cap below the worker count: fewer workers, never a share of zero
    settings.POSTBACK_HOST_CONCURRENCY = 2
    enqueue_run_workers(queued_run)
    assert queued_run.workers == 2
    assert EngineSettings.from_settings(share_of=2).host_concurrency == 1
