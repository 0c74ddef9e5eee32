"""`manage.py retrigger_conversions`: same criteria, same rules, clear errors."""

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from conversions.models import Conversion, DeliveryAttempt, RetriggerRun
from tests import factories as f

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def world(httpserver, allow_loopback):
    httpserver.expect_request("/pb").respond_with_data("ok")
    account = f.make_account()
    affiliate = f.make_affiliate(account)
    f.make_postback(affiliate, httpserver.url_for("/pb") + "?cid={click_id}")
    conversions = [f.make_conversion(affiliate) for _ in range(4)]
    return {"account": account, "affiliate": affiliate, "conversions": conversions}


def run_command(*args: str) -> str:
    out = StringIO()
    call_command("retrigger_conversions", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_repeatable_comma_separated_ids_select_exactly_those(httpserver, world):
    # given
    first, second, third, _ = world["conversions"]

    # when
    output = run_command("--id", f"{first.pk},{second.pk}", "--id", str(third.pk), "--json")

    # then
    document = json.loads(output)
    assert document["info"]["id"] == [first.pk, second.pk, third.pk]
    assert [r["conversionId"] for r in document["results"]] == [first.pk, second.pk, third.pk]
    assert document["run"]["delivered"] == 3 and len(httpserver.log) == 3
    run = RetriggerRun.objects.get()
    assert run.source == "command" and run.actor == "command line"


def test_summary_names_counts_and_skip_reasons(world):
    Conversion.objects.filter(pk=world["conversions"][0].pk).update(status="rejected")

    output = run_command("--affiliate-id", str(world["affiliate"].pk))

    assert "matched 4" in output and "delivered 3" in output
    assert "skipped rejected: 1" in output


def test_dry_run_sends_nothing(httpserver, world):
    output = run_command("--dry-run", "--json")

    document = json.loads(output)
    assert document["run"]["status"] == "dry_run" and document["run"]["retriggered"] == 4
    assert len(httpserver.log) == 0 and not DeliveryAttempt.objects.exists()


def test_dry_run_summary_without_json(httpserver, world):
    output = run_command("--dry-run")

    assert output.startswith("Dry run: matched 4, selected 4, would fire 4")
    assert "Queued" not in output
    assert len(httpserver.log) == 0


def test_force_refires_delivered(httpserver, world):
    run_command()
    run_command("--force")

    assert len(httpserver.log) == 8


@pytest.mark.parametrize(
    "args, key",
    [
        (["--id", "abc"], "id"),
        (["--id", "0"], "id"),
        (["--click-id", "not-a-uuid"], "clickIds"),
        (["--limit", "0"], "limit"),
        (["--offset", "-1"], "offset"),
        (["--sort", "--date"], "sort"),
        (["--from-date", "yesterday"], "fromDate"),
    ],
)
def test_bad_input_exits_non_zero_and_fires_nothing(httpserver, world, args, key):
    with pytest.raises(CommandError) as error:
        run_command(*args)

    assert key in str(error.value)
    assert len(httpserver.log) == 0 and not RetriggerRun.objects.exists()


def test_user_is_scoped_to_their_accounts(httpserver, world):
    # given an admin of another account only
    other = f.make_account()
    admin = f.make_account_admin(other, username="other-admin")

    # when they name the world's account
    with pytest.raises(CommandError):
        run_command("--user", "other-admin", "--account-id", str(world["account"].pk))

    # then nothing fired, and without the filter they select nothing of the world's
    output = run_command("--user", admin.username, "--json")
    assert json.loads(output)["run"]["matched"] == 0
    assert len(httpserver.log) == 0


def test_member_user_is_refused(world):
    f.make_member(world["account"], username="member")

    with pytest.raises(CommandError, match="not an account admin"):
        run_command("--user", "member")


def test_an_empty_user_is_refused_not_the_command_line(world, httpserver):
    with pytest.raises(CommandError, match="No user named ''"):
        run_command("--user", "")

    assert len(httpserver.log) == 0


def test_follow_refuses_criteria_it_would_ignore(world):
    with pytest.raises(CommandError, match="--follow"):
        run_command("--follow", "1", "--id", "5")


@pytest.mark.parametrize(
    "args, says",
    [
        (["--processes", "2", "--json"], "drop it or --json"),
        (["--processes", "2", "--background"], "drop it or --background"),
        (["--processes", "2", "--dry-run"], "drop it or --dry-run"),
        (["--background", "--dry-run"], "A dry run is never queued"),
        (["--processes", "-1"], "--processes must be 0"),
    ],
)
def test_option_combinations_that_cannot_apply_are_refused(httpserver, world, args, says):
    with pytest.raises(CommandError, match=says):
        run_command(*args)
    assert not RetriggerRun.objects.exists() and len(httpserver.log) == 0


def test_a_bad_processes_setting_is_named(world, settings):
    settings.RETRIGGER_COMMAND_PROCESSES = -1
    with pytest.raises(CommandError, match="RETRIGGER_COMMAND_PROCESSES must be 0"):
        run_command()


@pytest.mark.parametrize("value", ["abc", "1.5", "8x"])
def test_a_setting_that_is_not_a_number_is_a_clear_configuration_error(monkeypatch, value):
    from django.core.exceptions import ImproperlyConfigured

    from project.settings import env_int

    monkeypatch.setenv("POSTBACK_HOST_CONCURRENCY", value)
    with pytest.raises(ImproperlyConfigured, match="POSTBACK_HOST_CONCURRENCY must be a whole"):
        env_int("POSTBACK_HOST_CONCURRENCY", 8)
