"""The shared input cases 001-005, each asserting the right value over real HTTP."""

import json
import uuid

import pytest

from conversions.models import Conversion, DeliveryAttempt, RetriggerRun
from tests import factories as f

URL = "/api/conversions/retrigger"

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def world(httpserver, allow_loopback):
    """An admin's account with one affiliate whose postback reaches a local receiver."""
    httpserver.expect_request("/pb").respond_with_data("ok")
    account = f.make_account()
    affiliate = f.make_affiliate(account)
    f.make_postback(affiliate, httpserver.url_for("/pb") + "?c={conversion_id}")
    return {"account": account, "affiliate": affiliate, "admin": f.make_account_admin(account)}


def post(client, user, body=None, query=""):
    return client.post(
        f"{URL}{query}",
        json.dumps(body if body is not None else {}),
        content_type="application/json",
        headers={"authorization": f"Token {f.token_for(user)}"},
    )


def assert_refused(response, key: str, httpserver) -> dict:
    assert response.status_code == 400
    errors = response.json()
    assert key in errors
    assert not RetriggerRun.objects.exists()
    assert not DeliveryAttempt.objects.exists()
    assert httpserver.log == []
    return errors


def fired_ids(httpserver) -> list[int]:
    return [int(request.args["c"]) for request, _ in httpserver.log]


# --- 001 malformed sort ------------------------------------------------------------------------


@pytest.mark.parametrize("sort", ["--date", ",", "-", "id,,date", "date desc"])
def test_001_malformed_sort_is_400_naming_sort(client, httpserver, world, sort):
    # given
    f.make_conversion(world["affiliate"])

    # when
    response = post(client, world["admin"], {"sort": sort})

    # then
    assert_refused(response, "sort", httpserver)
    text = response.content.decode().lower()
    assert not any(word in text for word in ("sql", "syntax", "order by", "traceback"))


def test_001_minus_date_then_id_is_valid_and_pages_without_repeats(client, httpserver, world):
    # given: many conversions sharing a few dates
    affiliate = world["affiliate"]
    days = [f"2026-01-{day:02d}T00:00:00Z" for day in (3, 1, 2)]
    for n in range(10):
        f.make_conversion(affiliate, id=500 - n, converted_at=days[n % 3])
    expected = list(Conversion.objects.order_by("-converted_at", "id").values_list("id", flat=True))

    # when: a dry run per page of 3
    seen: list[int] = []
    for offset in range(0, 12, 3):
        body = {"sort": "-date,id", "offset": offset, "limit": 3}
        response = post(client, world["admin"], body, query="?dryRun=1")
        assert response.status_code == 200
        assert response.json()["info"]["sort"] == "-date,id"
        seen += [result["conversionId"] for result in response.json()["results"]]

    # then
    assert seen == expected
    assert httpserver.log == []


# --- 002 click-id lists -------------------------------------------------------------------------

GOOD = "9b2f0c1e-1111-4a4a-8b8b-000000000001"


@pytest.mark.parametrize(
    ("click_ids", "position"),
    [
        (["", GOOD], "Item 0"),
        (["9b2f0c1e-1111-4a4a-8b8b-00000000000z"], "Item 0"),
        ([GOOD, "not-a-uuid"], "Item 1"),
        (GOOD, None),
    ],
)
def test_002_bad_click_id_lists_are_400_naming_clickids(
    client, httpserver, world, click_ids, position
):
    # given
    f.make_conversion(world["affiliate"], click_id=uuid.UUID(GOOD))

    # when
    response = post(client, world["admin"], {"clickIds": click_ids})

    # then
    errors = assert_refused(response, "clickIds", httpserver)
    if position is not None:
        assert position in errors["clickIds"][0]


@pytest.mark.parametrize("spelling", [GOOD, GOOD.upper(), GOOD[:9] + GOOD[9:].upper()])
def test_002_any_case_of_a_click_id_fires_the_same_conversions(client, httpserver, world, spelling):
    # given
    mine = f.make_conversion(world["affiliate"], click_id=uuid.UUID(GOOD))
    f.make_conversion(world["affiliate"])

    # when
    response = post(client, world["admin"], {"clickIds": [spelling]})

    # then
    assert response.status_code == 200
    assert response.json()["run"]["matched"] == 1
    assert response.json()["info"]["clickIds"] == [GOOD]
    assert fired_ids(httpserver) == [mine.pk]


# --- 003 scalars, strings and empty lists ---------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ({"affiliateId": 7}, "affiliateId"),
        ({"affiliateId": "7,8"}, "affiliateId"),
        ({"affiliateIds": [7]}, "affiliateIds"),
    ],
)
def test_003_scalar_string_and_unknown_key_are_400(client, httpserver, world, body, key):
    # given
    f.make_conversion(world["affiliate"])

    # when
    response = post(client, world["admin"], body)

    # then
    assert_refused(response, key, httpserver)


def test_003_an_empty_list_matches_nothing_and_fires_nothing(client, httpserver, world):
    # given
    f.make_conversion(world["affiliate"])

    # when
    response = post(client, world["admin"], {"affiliateId": []})

    # then
    assert response.status_code == 200
    run = response.json()["run"]
    assert (run["matched"], run["selected"], run["retriggered"]) == (0, 0, 0)
    assert response.json()["results"] == []
    assert httpserver.log == []


def test_003_null_means_no_filter_on_that_key(client, httpserver, world):
    # given: brand 11 under two affiliates, and a conversion without it
    account = world["account"]
    brand = f.make_brand(account, id=11)
    other = f.make_affiliate(account)
    branded = [
        f.make_conversion(world["affiliate"], brand=brand),
        f.make_conversion(other, brand=brand),
    ]
    f.make_conversion(world["affiliate"])

    # when
    response = post(client, world["admin"], {"affiliateId": None, "brandIds": [11]})

    # then
    assert response.status_code == 200
    assert response.json()["info"]["affiliateId"] is None
    assert response.json()["run"]["matched"] == 2
    assert sorted(r["conversionId"] for r in response.json()["results"]) == sorted(
        c.pk for c in branded
    )
    assert fired_ids(httpserver) == [branded[0].pk]  # the other affiliate has no postback


# --- 004 boolean flags ------------------------------------------------------------------------


@pytest.mark.parametrize("query", ["?force=0", "?force=false", "?force=FALSE", ""])
def test_004_false_flags_never_bypass_a_skip_rule(client, httpserver, world, query):
    # given
    f.make_conversion(world["affiliate"], status=Conversion.Status.REJECTED)

    # when
    response = post(client, world["admin"], query=query)

    # then
    assert response.status_code == 200
    assert response.json()["info"]["force"] is False
    assert response.json()["run"]["skippedByReason"] == {"rejected": 1}
    assert httpserver.log == []


@pytest.mark.parametrize("query", ["?force=1", "?force=true", "?force=TRUE", "?force=True"])
def test_004_true_flags_force(client, httpserver, world, query):
    # given
    rejected = f.make_conversion(world["affiliate"], status=Conversion.Status.REJECTED)

    # when
    response = post(client, world["admin"], query=query)

    # then
    assert response.status_code == 200
    assert response.json()["info"]["force"] is True
    assert fired_ids(httpserver) == [rejected.pk]


@pytest.mark.parametrize("query", ["?force=", "?force=no", "?force=2", "?dryRun=", "?dryRun=yes"])
def test_004_other_flag_values_are_400_naming_the_flag(client, httpserver, world, query):
    # given
    f.make_conversion(world["affiliate"])

    # when
    response = post(client, world["admin"], query=query)

    # then
    assert_refused(response, query[1:].split("=")[0], httpserver)


def test_004_dry_run_zero_is_a_real_run(client, httpserver, world):
    # given
    conversion = f.make_conversion(world["affiliate"])

    # when
    response = post(client, world["admin"], query="?dryRun=0")

    # then
    assert response.status_code == 200
    assert response.json()["info"]["dryRun"] is False
    assert response.json()["run"]["id"] == RetriggerRun.objects.get().pk
    assert fired_ids(httpserver) == [conversion.pk]


# --- 005 offset and limit -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ({"offset": -1}, "offset"),
        ({"limit": -5}, "limit"),
        ({"limit": 0}, "limit"),
        ({"limit": 100_000_000}, "limit"),
        ({"offset": "ten"}, "offset"),
        ({"limit": 1.0}, "limit"),
    ],
)
def test_005_bad_paging_values_are_400_naming_the_key(client, httpserver, world, body, key):
    # given
    f.make_conversion(world["affiliate"])

    # when
    response = post(client, world["admin"], body)

    # then
    assert_refused(response, key, httpserver)


def test_005_the_maximum_limit_is_stated_and_accepted(client, httpserver, world, settings):
    # given
    settings.RETRIGGER_MAX_LIMIT = 100_000
    f.make_conversion(world["affiliate"])

    # when
    over = post(client, world["admin"], {"limit": 100_001})
    at_max = post(client, world["admin"], {"limit": 100_000}, query="?dryRun=1")
    schema = client.get("/api/schema/", headers={"accept": "application/json"})

    # then
    assert "100000" in over.json()["limit"][0]
    assert at_max.status_code == 200
    assert at_max.json()["info"]["limit"] == 100_000
    assert "RETRIGGER_MAX_LIMIT" in schema.content.decode()
