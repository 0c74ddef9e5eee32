"""The shared service end to end: real database, real local HTTP receiver."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from conversions.access import COMMAND_LINE_ACTOR, actor_for_user
from conversions.criteria import parse_criteria
from conversions.models import (
    Conversion,
    DeliveryAttempt,
    DeliveryClaim,
    RetriggerChunk,
    RetriggerRun,
    RunItem,
)
from conversions.services import (
    conversions_retrigger,
    conversions_retrigger_queryset,
    run_cancel,
    run_work,
)
from tests import factories as f

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def fast_retries(settings):
    settings.POSTBACK_RETRY_BASE = 0.01
    settings.POSTBACK_RETRY_CAP = 0.05
    settings.POSTBACK_CONNECT_TIMEOUT = 1
    settings.POSTBACK_READ_TIMEOUT = 2
    return settings


@pytest.fixture
def world(httpserver, allow_loopback, fast_retries):
    account = f.make_account()
    affiliate = f.make_affiliate(account)
    postback = f.make_postback(
        affiliate, httpserver.url_for("/pb") + "?cid={click_id}&amt={payout}&e={event_id}"
    )
    return {"account": account, "affiliate": affiliate, "postback": postback}


def retrigger(body=None, *, force=False, dry_run=False, actor=COMMAND_LINE_ACTOR, **kw):
    return conversions_retrigger(
        criteria=parse_criteria(body or {}),
        actor=actor,
        force=force,
        dry_run=dry_run,
        source=RetriggerRun.Source.API,
        **kw,
    )


def test_fires_each_selected_conversion_and_records_attempts(httpserver, world):
    # given
    httpserver.expect_request("/pb").respond_with_data("ok")
    conversions = [f.make_conversion(world["affiliate"], payout=Decimal("7.1")) for _ in range(3)]

    # when
    result = retrigger()

    # then
    assert result.run.status == RetriggerRun.Status.COMPLETED
    assert (result.counts.selected, result.counts.retriggered, result.counts.delivered) == (3, 3, 3)
    assert [r.conversion_id for r in result.results] == [c.pk for c in conversions]
    assert all(r.outcome == "delivered" for r in result.results)
    assert len(httpserver.log) == 3
    sent = {req.args["cid"] for req, _ in httpserver.log}
    assert sent == {str(c.click_id) for c in conversions}
    assert {req.args["amt"] for req, _ in httpserver.log} == {"7.10"}
    attempts = DeliveryAttempt.objects.filter(run=result.run)
    assert attempts.count() == 3 and all(a.delivered and a.final for a in attempts)
    assert RunItem.objects.filter(run=result.run).count() == 3
    assert not DeliveryClaim.objects.exists()


def test_event_id_is_stable_across_refires(httpserver, world):
    httpserver.expect_request("/pb").respond_with_data("ok")
    f.make_conversion(world["affiliate"])

    retrigger()
    retrigger(force=True)

    event_ids = [req.args["e"] for req, _ in httpserver.log]
    assert len(event_ids) == 2 and event_ids[0] == event_ids[1]


@pytest.mark.parametrize(
    ("conversion_id", "postback_id"),
    [(1, 1), (9_223_372_036_854_775_807, 2_147_483_647), *((n * 7919, n) for n in range(64))],
)
def test_event_id_text_is_the_uuid5(conversion_id, postback_id):
    expected = DeliveryAttempt.event_id_for(conversion_id, postback_id)
    assert DeliveryAttempt.event_id_text(conversion_id, postback_id) == str(expected)
    assert expected.version == 5


@pytest.mark.parametrize("force", [False, True])
def test_rejected_and_already_delivered_skip_unless_forced(httpserver, world, force):
    # given
    httpserver.expect_request("/pb").respond_with_data("ok")
    rejected = f.make_conversion(world["affiliate"], status=Conversion.Status.REJECTED)
    delivered = f.make_conversion(world["affiliate"])
    retrigger({"id": [delivered.pk]})
    httpserver.clear_log()

    # when
    result = retrigger({"id": [rejected.pk, delivered.pk]}, force=force)

    # then
    if force:
        assert result.counts.retriggered == 2 and len(httpserver.log) == 2
        assert result.counts.skipped_by_reason == {}
    else:
        assert result.counts.retriggered == 0 and len(httpserver.log) == 0
        assert result.counts.skipped_by_reason == {"rejected": 1, "already_delivered": 1}
        outcomes = {r.conversion_id: r.postbacks[0].error for r in result.results}
        assert outcomes == {rejected.pk: "rejected", delivered.pk: "already_delivered"}


@pytest.mark.parametrize("force", [False, True])
def test_inactive_affiliate_and_no_postback_are_always_skipped(httpserver, world, force):
    # given
    inactive = f.make_affiliate(world["account"], is_active=False)
    f.make_postback(inactive, httpserver.url_for("/pb"))
    bare = f.make_affiliate(world["account"])
    other_type_only = f.make_affiliate(world["account"])
    f.make_postback(
        other_type_only,
        httpserver.url_for("/pb"),
        conversion_type=f.make_conversion_type("deposit"),
    )
    f.make_postback(bare, httpserver.url_for("/pb"), is_active=False)
    conversions = [f.make_conversion(a) for a in (inactive, bare, other_type_only)]

    # when
    result = retrigger({"id": [c.pk for c in conversions]}, force=force)

    # then
    assert len(httpserver.log) == 0
    assert result.counts.skipped == 3
    assert result.counts.skipped_by_reason == {"affiliate_inactive": 1, "no_postback": 2}


def test_inactive_affiliate_wins_over_rejected(world):
    inactive = f.make_affiliate(world["account"], is_active=False)
    f.make_postback(inactive, "http://127.0.0.1:9/pb")
    f.make_conversion(inactive, status=Conversion.Status.REJECTED)

    result = retrigger({"affiliateId": [inactive.pk]})

    assert result.counts.skipped_by_reason == {"affiliate_inactive": 1}


def test_pair_claimed_by_another_run_is_in_progress_even_when_forced(httpserver, world):
    # given another run holds the claim on the pair
    conversion = f.make_conversion(world["affiliate"])
    other = RetriggerRun.objects.create(actor="other", source="api", criteria={})
    DeliveryClaim.objects.create(conversion=conversion, postback=world["postback"], run=other)

    # when
    result = retrigger(force=True)

    # then
    assert len(httpserver.log) == 0
    assert result.counts.skipped_by_reason == {"in_progress": 1}
    assert DeliveryClaim.objects.get().run == other


def test_dry_run_sends_and_stores_nothing(httpserver, world):
    f.make_conversion(world["affiliate"])
    f.make_conversion(world["affiliate"], status=Conversion.Status.REJECTED)

    result = retrigger(dry_run=True)

    assert result.run is None
    document = result.to_document()
    assert document["run"]["id"] is None and document["run"]["status"] == "dry_run"
    assert document["run"]["retriggered"] == 1
    assert [r["outcome"] for r in document["results"]] == ["would_fire", "skipped"]
    assert document["results"][0]["postbacks"][0]["outcome"] == "would_fire"
    assert len(httpserver.log) == 0
    assert not RetriggerRun.objects.exists() and not DeliveryAttempt.objects.exists()


def test_retries_5xx_then_records_every_attempt(httpserver, world):
    # given the receiver fails twice, then answers 200
    httpserver.expect_ordered_request("/pb").respond_with_data("busy", status=503)
    httpserver.expect_ordered_request("/pb").respond_with_data("busy", status=500)
    httpserver.expect_ordered_request("/pb").respond_with_data("ok", status=200)
    f.make_conversion(world["affiliate"])

    # when
    result = retrigger()

    # then
    pair = result.results[0].postbacks[0]
    assert (pair.outcome, pair.attempts, pair.status_code) == ("delivered", 3, 200)
    attempts = list(DeliveryAttempt.objects.order_by("attempt_number"))
    assert [a.status_code for a in attempts] == [503, 500, 200]
    assert [a.final for a in attempts] == [False, False, True]


def test_final_4xx_is_not_retried(httpserver, world):
    httpserver.expect_request("/pb").respond_with_data("nope", status=404)
    f.make_conversion(world["affiliate"])

    result = retrigger()

    pair = result.results[0].postbacks[0]
    assert (pair.outcome, pair.attempts, pair.error) == ("failed", 1, "http_status")
    assert result.counts.failed == 1 and result.results[0].outcome == "failed"


def test_max_attempts_then_failed(httpserver, world, settings):
    settings.POSTBACK_MAX_ATTEMPTS = 2
    httpserver.expect_request("/pb").respond_with_data("down", status=502)
    f.make_conversion(world["affiliate"])

    result = retrigger()

    pair = result.results[0].postbacks[0]
    assert (pair.outcome, pair.attempts, pair.status_code) == ("failed", 2, 502)
    assert len(httpserver.log) == 2


def test_blocked_address_is_recorded_without_connection(world, settings):
    settings.POSTBACK_ALLOWED_NETWORKS = []
    f.make_conversion(world["affiliate"])

    result = retrigger()

    pair = result.results[0].postbacks[0]
    assert (pair.outcome, pair.error, pair.attempts) == ("failed", "blocked_address", 1)
    attempt = DeliveryAttempt.objects.get()
    assert attempt.error == "blocked_address" and attempt.status_code is None


def test_account_admin_selection_is_limited_to_their_accounts(httpserver, world):
    httpserver.expect_request("/pb").respond_with_data("ok")
    mine = f.make_conversion(world["affiliate"])
    other_account = f.make_account()
    other_affiliate = f.make_affiliate(other_account)
    f.make_postback(other_affiliate, httpserver.url_for("/pb"))
    f.make_conversion(other_affiliate)
    admin = f.make_account_admin(world["account"])

    result = retrigger(actor=actor_for_user(admin))

    assert [r.conversion_id for r in result.results] == [mine.pk]
    assert result.counts.matched == 1 and len(httpserver.log) == 1


def test_large_selection_is_queued_in_chunks_then_worked(httpserver, world, settings):
    # given more conversions than a request may fire
    settings.RETRIGGER_SYNC_MAX = 3
    settings.RETRIGGER_CHUNK_SIZE = 2
    httpserver.expect_request("/pb").respond_with_data("ok")
    for _ in range(5):
        f.make_conversion(world["affiliate"])

    # when the service is called it queues; a worker then takes the chunks
    result = retrigger(background=None)
    assert result.queued and result.run.status == RetriggerRun.Status.QUEUED
    assert result.to_document()["run"]["processed"] == 0
    assert RetriggerChunk.objects.filter(run=result.run).count() == 3
    run_work(run=result.run)

    # then
    run = RetriggerRun.objects.get(pk=result.run.pk)
    assert (run.status, run.processed, run.delivered) == ("completed", 5, 5)
    assert len(httpserver.log) == 5


def test_taken_over_run_fires_nothing_twice(httpserver, world, settings):
    # given a run whose worker counted one conversion, then died holding its chunk
    settings.RETRIGGER_SYNC_MAX = 1
    settings.RETRIGGER_CHUNK_SIZE = 10
    settings.RETRIGGER_HEARTBEAT_STALE = 0
    httpserver.expect_request("/pb").respond_with_data("ok")
    first, second = (f.make_conversion(world["affiliate"]) for _ in range(2))
    result = retrigger(background=True)
    run = result.run
    RetriggerRun.objects.filter(pk=run.pk).update(status="running")
    RunItem.objects.create(run=run, conversion=first, outcome="delivered")
    RetriggerChunk.objects.filter(run=run).update(
        status="running", worker="dead:1", heartbeat_at=timezone.now() - timedelta(minutes=5)
    )

    # when another worker takes the stale chunk over
    run_work(run=run)

    # then only the uncounted conversion was fired
    assert [req.args["cid"] for req, _ in httpserver.log] == [str(second.click_id)]
    run.refresh_from_db()
    assert run.status == "completed"


def test_cancel_before_start_fires_nothing(httpserver, world, settings):
    settings.RETRIGGER_SYNC_MAX = 0
    f.make_conversion(world["affiliate"])
    result = retrigger()

    run = run_cancel(run=result.run, actor=COMMAND_LINE_ACTOR)
    run_work(run=run)

    run.refresh_from_db()
    assert run.status == "cancelled" and len(httpserver.log) == 0


def test_queryset_door_scopes_and_reports(httpserver, world):
    httpserver.expect_request("/pb").respond_with_data("ok")
    mine = f.make_conversion(world["affiliate"])
    other = f.make_conversion(f.make_affiliate(f.make_account()))
    admin = f.make_account_admin(world["account"])

    result = conversions_retrigger_queryset(
        queryset=Conversion.objects.all(),
        actor=actor_for_user(admin),
        source=RetriggerRun.Source.ADMIN,
    )

    assert result.counts.selected == 1 and result.counts.delivered == 1
    assert [r.conversion_id for r in result.results] == [mine.pk]
    assert other.pk not in {r.conversion_id for r in result.results}


def test_interrupting_a_foreground_run_cancels_it(httpserver, world):
    # given a run whose operator presses Ctrl-C while it works
    httpserver.expect_request("/pb").respond_with_data("ok")
    for _ in range(3):
        f.make_conversion(world["affiliate"])

    def interrupt(counts):
        raise KeyboardInterrupt

    # when
    with pytest.raises(KeyboardInterrupt):
        retrigger(progress=interrupt)

    # then the run is cancelled, not left for a worker to finish later
    run = RetriggerRun.objects.get()
    assert (run.status, run.cancel_requested) == ("cancelled", True)
    assert not DeliveryClaim.objects.exists()


def test_secrets_echoed_by_a_receiver_are_masked_in_the_stored_excerpt(httpserver, world):
    # given a receiver that echoes the request line, token included
    httpserver.expect_request("/echo").respond_with_data("you sent token=abcSECRET123 ok")
    world["postback"].url = httpserver.url_for("/echo") + "?token=abcSECRET123&c={click_id}"
    world["postback"].save()
    f.make_conversion(world["affiliate"])

    # when
    retrigger()

    # then
    attempt = DeliveryAttempt.objects.get()
    assert attempt.delivered
    assert "abcSECRET123" not in attempt.response_excerpt
    assert "abcSECRET123" not in attempt.url
    assert "you sent" in attempt.response_excerpt


def test_a_chunk_read_in_slices_is_done_only_after_its_last_slice(
    httpserver, world, settings, monkeypatch
):
    # given chunks of 5 conversions, read 2 at a time
    from conversions import execution

    httpserver.expect_request("/pb").respond_with_data("ok")
    monkeypatch.setattr(execution, "SLICE_SIZE", 2)
    settings.RETRIGGER_CHUNK_SIZE = 5
    settings.RETRIGGER_SYNC_MAX = 100
    settings.POSTBACK_MAX_WORKERS = 1  # one job taken a pass: slices finish before the next
    conversions = [f.make_conversion(world["affiliate"]) for _ in range(11)]
    done_chunks: list[int] = []
    real_chunk_done = execution.RunRecorder.chunk_done

    def chunk_done(recorder, chunk_id):
        # when a chunk ends, every conversion of it has been counted (stored or buffered)
        chunk = RetriggerChunk.objects.get(pk=chunk_id)
        stored = RunItem.objects.filter(run_id=recorder.run.pk)
        counted = set(stored.values_list("conversion_id", flat=True))
        counted |= {item[0] for item, _ in recorder._items}
        assert set(chunk.conversion_ids) <= counted
        done_chunks.append(chunk_id)
        real_chunk_done(recorder, chunk_id)

    monkeypatch.setattr(execution.RunRecorder, "chunk_done", chunk_done)

    # when
    result = retrigger()

    # then
    run = result.run
    assert run.status == "completed" and run.processed == run.delivered == 11
    assert sorted(done_chunks) == sorted(run.chunks.values_list("pk", flat=True))
    assert not run.chunks.exclude(status="done").exists()
    assert len(httpserver.log) == 11
    assert RunItem.objects.filter(run=run).count() == 11
    assert {c.pk for c in conversions} == set(
        RunItem.objects.filter(run=run).values_list("conversion_id", flat=True)
    )


def test_ctrl_c_while_planning_leaves_the_run_cancelled_not_queued(world, monkeypatch):
    from conversions import services

    f.make_conversion(world["affiliate"])

    def interrupted(selection):
        raise KeyboardInterrupt
        yield  # a generator, like the real one

    monkeypatch.setattr(services, "_id_batches", interrupted)
    with pytest.raises(KeyboardInterrupt):
        retrigger(background=False)

    run = RetriggerRun.objects.get()
    assert run.status == RetriggerRun.Status.CANCELLED and run.cancel_requested


def test_ctrl_c_right_after_claiming_leaves_no_claim_behind(httpserver, world, monkeypatch):
    # given a Ctrl-C that lands just after the claims are written, before the worker
    # has taken note of them
    from conversions import execution

    httpserver.expect_request("/pb").respond_with_data("ok")
    for _ in range(3):
        f.make_conversion(world["affiliate"])
    real_insert_claims = execution.insert_claims

    def insert_then_interrupt(*args, **kwargs):
        real_insert_claims(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(execution, "insert_claims", insert_then_interrupt)

    # when
    with pytest.raises(KeyboardInterrupt):
        retrigger()

    # then the run is cancelled, nothing was sent and no claim blocks a later run
    run = RetriggerRun.objects.get()
    assert run.status == "cancelled"
    assert not DeliveryClaim.objects.exists()
    assert len(httpserver.log) == 0
