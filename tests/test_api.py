"""`POST /api/conversions/retrigger` and the run endpoints over HTTP (contract section 5)."""

import json
import threading
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.utils import timezone

from conversions.api import idempotency
from conversions.criteria import parse_criteria
from conversions.models import DeliveryAttempt, IdempotencyRecord, RetriggerRun
from tests import factories as f

URL = "/api/conversions/retrigger"
JSON = "application/json"


def call(
    client: Client,
    *,
    user=None,
    body: object = None,
    raw: bytes | str | None = None,
    query: str = "",
    method: str = "POST",
    content_type: str | None = JSON,
    scheme: str = "Token",
    path: str = URL,
    **headers,
):
    """One request as a client would send it; `body` is JSON-encoded, `raw` sent as is."""
    if user is not None:
        headers["authorization"] = f"{scheme} {f.token_for(user)}"
    data = raw if raw is not None else (b"" if body is None else json.dumps(body))
    # CONTENT_TYPE directly: the test client drops `content_type` when the body is empty.
    extra = (
        {} if content_type is None else {"content_type": content_type, "CONTENT_TYPE": content_type}
    )
    return client.generic(method, f"{path}{query}", data, headers=headers, **extra)


def assert_nothing_fired(httpserver=None) -> None:
    assert not RetriggerRun.objects.exists()
    assert not DeliveryAttempt.objects.exists()
    if httpserver is not None:
        assert httpserver.log == []


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    # Users get a password in the factories; the default hasher would dominate run time.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def account():
    return f.make_account()


@pytest.fixture
def admin(account):
    return f.make_account_admin(account)


@pytest.fixture
def conversion(account):
    return f.make_conversion(f.make_affiliate(account))


# --- authentication, permission, throttle, method, media type: each refusal ------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    "authorization",
    [None, "Token", "Token nope", "Bearer nope", "Basic dXNlcjpwdw==", "Token a b", "Token \u00e9"],
)
def test_no_or_bad_token_is_401_with_a_challenge(client, authorization):
    # given
    headers = {} if authorization is None else {"authorization": authorization}

    # when
    response = call(client, body={}, **headers)

    # then
    assert response.status_code == 401
    assert "detail" in response.json()
    assert "Token" in response["WWW-Authenticate"]
    assert "Bearer" in response["WWW-Authenticate"]
    assert_nothing_fired()


@pytest.mark.django_db
def test_a_token_of_an_inactive_user_is_401(client, account):
    # given
    user = f.make_account_admin(account)
    token = f.token_for(user)
    user.is_active = False
    user.save()

    # when
    response = call(client, body={}, authorization=f"Token {token}")

    # then
    assert response.status_code == 401


@pytest.mark.django_db
@pytest.mark.parametrize("scheme", ["Token", "Bearer", "token", "BEARER"])
def test_token_and_bearer_schemes_both_authenticate(client, admin, conversion, scheme):
    # when
    response = call(client, user=admin, query="?dryRun=1", scheme=scheme)

    # then
    assert response.status_code == 200
    assert response.json()["run"]["matched"] == 1


@pytest.mark.django_db
@pytest.mark.parametrize("make", ["member", "nobody", "member_elsewhere"])
def test_a_user_who_is_not_an_account_admin_is_403(client, account, make):
    # given
    user = {
        "member": lambda: f.make_member(account),
        "nobody": lambda: f.make_user(),
        "member_elsewhere": lambda: f.make_member(account, f.make_account()),
    }[make]()

    # when
    response = call(client, user=user, body={})

    # then
    assert response.status_code == 403
    assert "detail" in response.json()
    assert_nothing_fired()


@pytest.mark.django_db
def test_throttle_is_per_user_at_the_configured_rate_with_retry_after(client, account, settings):
    # given
    settings.RETRIGGER_THROTTLE_RATE = "2/min"
    first, second = f.make_account_admin(account), f.make_account_admin(account)

    # when
    codes = [call(client, user=first, query="?dryRun=1").status_code for _ in range(2)]
    throttled = call(client, user=first, query="?dryRun=1")
    other = call(client, user=second, query="?dryRun=1")

    # then
    assert codes == [200, 200]
    assert throttled.status_code == 429
    assert "detail" in throttled.json()
    assert 0 < int(throttled["Retry-After"]) <= 60
    assert other.status_code == 200


@pytest.mark.django_db
@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_other_methods_are_405(client, admin, method):
    # when
    response = call(client, user=admin, body={}, method=method)

    # then
    assert response.status_code == 405
    assert "detail" in response.json()
    assert response["Allow"] == "POST"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("content_type", "raw"),
    [
        ("text/plain", "{}"),
        ("application/xml", "<a/>"),
        ("application/x-www-form-urlencoded", "affiliateId=7"),
        ("application/x-www-form-urlencoded", ""),
        ("multipart/form-data; boundary=x", ""),
        ("application/jsonp", "{}"),
        ("application/+json", "{}"),
        ("text/json-seq", "{}"),
        ("", '{"affiliateId": [7]}'),
    ],
)
def test_unsupported_body_types_are_415(client, admin, content_type, raw):
    # when
    response = call(client, user=admin, raw=raw, content_type=content_type)

    # then
    assert response.status_code == 415
    assert "detail" in response.json()
    assert_nothing_fired()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "APPLICATION/JSON",
        "text/json",
        "application/vnd.api+json",
        "application/merge-patch+json",
        "application/problem+json; charset=UTF-8",
    ],
)
def test_json_media_types_are_accepted(client, admin, account, conversion, content_type):
    # given
    body = {"accountId": [account.pk]}

    # when
    response = call(client, user=admin, body=body, query="?dryRun=true", content_type=content_type)

    # then
    assert response.status_code == 200
    assert response.json()["info"]["accountId"] == [account.pk]


@pytest.mark.django_db
@pytest.mark.parametrize(("content_type", "raw"), [(None, b""), (JSON, b""), (JSON, b" \n ")])
def test_an_empty_body_means_no_criteria(client, admin, conversion, content_type, raw):
    # when
    response = call(client, user=admin, raw=raw, content_type=content_type, query="?dryRun=1")

    # then
    assert response.status_code == 200
    info = response.json()["info"]
    assert (info["affiliateId"], info["limit"], info["sort"]) == (None, 100, "id")


@pytest.mark.django_db
def test_a_body_over_the_upload_limit_is_413(client, admin, settings):
    # given
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 100

    # when
    response = call(client, user=admin, body={"id": list(range(1, 100))})

    # then
    assert response.status_code == 413
    assert_nothing_fired()


# --- the order of the checks ---------------------------------------------------------------


@pytest.mark.django_db
def test_401_comes_before_everything(client):
    # when: no token, wrong method, wrong type, bad flag
    response = call(client, method="PUT", raw="<a/>", content_type="text/xml", query="?force=x")

    # then
    assert response.status_code == 401


@pytest.mark.django_db
def test_403_not_an_admin_comes_before_429(client, account, settings):
    # given
    settings.RETRIGGER_THROTTLE_RATE = "1/min"
    member = f.make_member(account)

    # when
    codes = [call(client, user=member, method="GET").status_code for _ in range(3)]

    # then
    assert codes == [403, 403, 403]


@pytest.mark.django_db
def test_429_comes_before_405_415_and_400(client, admin, settings):
    # given: the only allowed request is used up
    settings.RETRIGGER_THROTTLE_RATE = "1/min"
    call(client, user=admin, query="?dryRun=1")

    # when
    responses = [
        call(client, user=admin, method="GET"),
        call(client, user=admin, raw="<a/>", content_type="text/xml"),
        call(client, user=admin, body={"sort": "--id"}),
    ]

    # then
    assert [r.status_code for r in responses] == [429, 429, 429]


@pytest.mark.django_db
def test_405_comes_before_415(client, admin):
    response = call(client, user=admin, method="PUT", raw="<a/>", content_type="text/xml")
    assert response.status_code == 405


@pytest.mark.django_db
def test_415_comes_before_400(client, admin):
    # when: bad flag and bad body, under a non-JSON type
    response = call(
        client, user=admin, raw="sort=--id", content_type="text/plain", query="?force=maybe"
    )

    # then
    assert response.status_code == 415


@pytest.mark.django_db
def test_400_comes_before_the_account_403(client, admin):
    # given
    foreign = f.make_account()

    # when
    bad = call(client, user=admin, body={"accountId": [foreign.pk]}, query="?force=maybe")
    good = call(client, user=admin, body={"accountId": [foreign.pk]})

    # then
    assert bad.status_code == 400
    assert list(bad.json()) == ["force"]
    assert good.status_code == 403


# --- 400: validation -----------------------------------------------------------------------

BAD_INPUT = [
    ({"affiliateIds": [7]}, "", "affiliateIds"),
    ({"affiliateId": 7}, "", "affiliateId"),
    ({"affiliateId": "7,8"}, "", "affiliateId"),
    ({"id": [2**63]}, "", "id"),
    ({"id": [True]}, "", "id"),
    ({"accountId": [0]}, "", "accountId"),
    ({"brandIds": [2**31]}, "", "brandIds"),
    ({"clickIds": ["nope"]}, "", "clickIds"),
    ({"fromDate": "2026-02-30"}, "", "fromDate"),
    ({"toDate": "soon"}, "", "toDate"),
    ({"updatedSince": 1}, "", "updatedSince"),
    ({"createdFrom": "2026-01-01T00:00:00+25:00"}, "", "createdFrom"),
    ({"fromDate": "2026-02-02", "toDate": "2026-02-01"}, "", "non_field_errors"),
    ({"offset": -1}, "", "offset"),
    ({"limit": 0}, "", "limit"),
    ({"limit": 100_001}, "", "limit"),
    ({"sort": "payout desc"}, "", "sort"),
    ({"sort": "nope"}, "", "sort"),
    ([], "", "non_field_errors"),
    ("text", "", "non_field_errors"),
    (None, "?force=yes", "force"),
    (None, "?dryRun=", "dryRun"),
    (None, "?force=1&force=0", "force"),
    (None, "?dryrun=1", "dryrun"),
    (None, "?format=json", "format"),
    (None, "?limit=5", "limit"),
]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("body", "query", "key"), BAD_INPUT)
def test_bad_input_is_400_naming_the_key_and_fires_nothing(
    client, httpserver, allow_loopback, admin, account, body, query, key
):
    # given: a conversion that would fire if anything got through
    affiliate = f.make_affiliate(account)
    f.make_postback(affiliate, httpserver.url_for("/pb"))
    f.make_conversion(affiliate)
    httpserver.expect_request("/pb").respond_with_data("ok")

    # when
    response = call(client, user=admin, body=body, query=query)

    # then
    assert response.status_code == 400
    errors = response.json()
    assert key in errors
    assert all(isinstance(m, str) for messages in errors.values() for m in messages)
    assert_nothing_fired(httpserver)


@pytest.mark.django_db
def test_every_bad_key_and_flag_is_named_in_one_answer(client, admin):
    # when
    response = call(
        client,
        user=admin,
        body={"affiliateId": 7, "sort": "-", "bogus": 1},
        query="?force=2&dryRun=x",
    )

    # then
    assert response.status_code == 400
    assert set(response.json()) == {"affiliateId", "sort", "bogus", "force", "dryRun"}


@pytest.mark.django_db
@pytest.mark.parametrize(
    "raw",
    [
        b"{",
        b'{"id": [1,]}',
        b'{"limit": NaN}',
        b'{"limit": Infinity}',
        b"[" * 100_000 + b"]" * 100_000,
        b"\xff\xfe{}",
        b'{"a": 1} trailing',
    ],
)
def test_malformed_json_is_400_without_internals(client, admin, raw):
    # when
    response = call(client, user=admin, raw=raw)

    # then
    assert response.status_code == 400
    errors = response.json()
    assert list(errors) == ["non_field_errors"]
    assert "Traceback" not in response.content.decode()
    assert_nothing_fired()


@pytest.mark.django_db
@pytest.mark.parametrize("digits", [5000, -5000])
def test_integers_past_the_interpreter_digit_limit_are_a_range_error_on_the_key(
    client, admin, digits
):
    # given an integer longer than Python converts by default
    number = ("-" if digits < 0 else "") + "9" * abs(digits)

    # when
    response = call(client, user=admin, raw=b'{"id": [' + number.encode() + b"]}")

    # then the key is named and no interpreter detail leaks
    assert response.status_code == 400
    assert list(response.json()) == ["id"]
    assert "sys." not in response.content.decode()
    assert_nothing_fired()


@pytest.mark.django_db
def test_huge_numbers_that_parse_are_refused_by_range(client, admin):
    # when
    response = call(client, user=admin, raw=b'{"id": [1e400], "offset": 99999999999999999999}')

    # then
    assert response.status_code == 400
    assert set(response.json()) == {"id", "offset"}


# --- 403: accounts -------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("dry_run", ["0", "1"])
def test_an_admin_naming_another_account_is_403(client, admin, account, dry_run):
    # given
    foreign = f.make_account()

    # when
    response = call(
        client, user=admin, body={"accountId": [account.pk, foreign.pk]}, query=f"?dryRun={dry_run}"
    )

    # then
    assert response.status_code == 403
    assert "accountId" in response.json()["detail"]
    assert str(foreign.pk) in response.json()["detail"]
    assert_nothing_fired()


@pytest.mark.django_db
def test_an_admins_selection_is_limited_to_their_accounts(client, admin, account):
    # given
    mine = f.make_conversion(f.make_affiliate(account))
    f.make_conversion(f.make_affiliate(f.make_account()))

    # when
    response = call(client, user=admin, query="?dryRun=1")

    # then
    document = response.json()
    assert (document["run"]["matched"], document["run"]["selected"]) == (1, 1)
    assert [r["conversionId"] for r in document["results"]] == [mine.pk]


@pytest.mark.django_db
def test_a_superuser_naming_an_unknown_account_matches_nothing(client, conversion):
    # given
    root = f.make_user(superuser=True)

    # when
    response = call(client, user=root, body={"accountId": [987654]})

    # then
    assert response.status_code == 200
    assert response.json()["run"]["matched"] == 0
    assert response.json()["results"] == []


# --- responses ------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("accept", "content_type"),
    [
        (None, "application/json"),
        ("application/json", "application/json"),
        ("text/json", "text/json"),
        ("text/plain", "text/plain"),
        ("text/plain;q=0.9, text/json", "text/json"),
        ("*/*", "application/json"),
        ("application/xml", "application/json"),
    ],
)
@pytest.mark.parametrize("status", [200, 400])
def test_response_types(client, admin, conversion, accept, content_type, status):
    # given
    headers = {} if accept is None else {"accept": accept}
    query = "?dryRun=1" if status == 200 else "?dryRun=maybe"

    # when
    response = call(client, user=admin, query=query, **headers)

    # then
    assert response.status_code == status
    assert response["Content-Type"].split(";")[0] == content_type
    assert json.loads(response.content)  # the same JSON text whatever the type


@pytest.mark.django_db
@pytest.mark.parametrize("path", [URL, URL + "/"])
def test_dry_run_document(client, admin, account, conversion, path):
    # given
    body = {"accountId": [account.pk], "fromDate": "2026-01-01", "toDate": "2026-02-15"}

    # when
    response = call(client, user=admin, body=body, query="?dryRun=TRUE&force=0", path=path)

    # then
    assert response.status_code == 200
    document = response.json()
    assert document["info"] == {
        "id": None,
        "affiliateId": None,
        "accountId": [account.pk],
        "clickIds": None,
        "conversionTypes": None,
        "brandIds": None,
        "trafficSourceId": None,
        "fromDate": "2026-01-01T00:00:00Z",
        "toDate": "2026-02-15T23:59:59.999999Z",
        "updatedSince": None,
        "createdFrom": None,
        "offset": 0,
        "limit": 100,
        "sort": "id",
        "force": False,
        "dryRun": True,
    }
    assert document["run"]["id"] is None
    assert document["run"]["status"] == "dry_run"
    assert [r["conversionId"] for r in document["results"]] == [conversion.pk]
    assert document["results"][0]["outcome"] in ("would_fire", "skipped")
    assert_nothing_fired()


@pytest.mark.django_db(transaction=True)
def test_a_small_run_fires_and_answers_200(client, httpserver, allow_loopback, account):
    # given
    admin = f.make_account_admin(account)
    affiliate = f.make_affiliate(account)
    postback = f.make_postback(affiliate, httpserver.url_for("/pb") + "?c={conversion_id}")
    conversion = f.make_conversion(affiliate)
    httpserver.expect_request("/pb").respond_with_data("ok")

    # when
    response = call(client, user=admin, body={"affiliateId": [affiliate.pk]})

    # then
    assert response.status_code == 200
    document = response.json()
    assert document["info"]["affiliateId"] == [affiliate.pk]
    run = document["run"]
    assert run["id"] == RetriggerRun.objects.get().pk
    assert run["status"] == "completed"
    assert {k: run[k] for k in ("matched", "selected", "retriggered", "delivered", "failed")} == {
        "matched": 1,
        "selected": 1,
        "retriggered": 1,
        "delivered": 1,
        "failed": 0,
    }
    assert (run["skipped"], run["skippedByReason"]) == (0, {})
    assert document["results"] == [
        {
            "conversionId": conversion.pk,
            "outcome": "delivered",
            "postbacks": [
                {
                    "postbackId": postback.pk,
                    "outcome": "delivered",
                    "statusCode": 200,
                    "attempts": 1,
                    "error": None,
                }
            ],
        }
    ]
    assert [req.args["c"] for req, _ in httpserver.log] == [str(conversion.pk)]


@pytest.mark.django_db(transaction=True)
def test_a_large_run_is_queued_202_and_readable_at_its_location(client, account, settings):
    # given
    settings.RETRIGGER_SYNC_MAX = 1
    admin = f.make_account_admin(account)
    affiliate = f.make_affiliate(account)
    f.make_postback(affiliate, "http://127.0.0.1:9/pb")
    for _ in range(2):
        f.make_conversion(affiliate)

    # when
    response = call(client, user=admin, body={"sort": "-id"})

    # then
    assert response.status_code == 202
    document = response.json()
    run = RetriggerRun.objects.get()
    assert response["Location"] == f"/api/conversions/retrigger-runs/{run.pk}"
    assert "results" not in document
    assert document["run"]["status"] == "queued"
    assert (document["run"]["id"], document["run"]["selected"]) == (run.pk, 2)
    assert document["info"]["sort"] == "-id"

    # when: read where Location points, with and without the trailing slash
    for path in (response["Location"], response["Location"] + "/"):
        detail = call(client, user=admin, method="GET", path=path, content_type=None)

        # then
        assert detail.status_code == 200
        assert detail.json()["info"] == document["info"]
        assert detail.json()["run"]["id"] == run.pk
        assert "processed" in detail.json()["run"]


@pytest.fixture
def queued_run(account, settings):
    settings.RETRIGGER_SYNC_MAX = 0
    admin = f.make_account_admin(account)
    affiliate = f.make_affiliate(account)
    f.make_postback(affiliate, "http://127.0.0.1:9/pb")
    f.make_conversion(affiliate)
    response = call(Client(), user=admin, body={})
    assert response.status_code == 202
    return RetriggerRun.objects.get(), admin


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("who", ["other_admin", "member", "foreign_admin"])
def test_a_run_does_not_exist_for_others(client, account, queued_run, who):
    # given
    run, _ = queued_run
    user = {
        "other_admin": lambda: f.make_account_admin(f.make_account()),
        "member": lambda: f.make_member(account),
        "foreign_admin": lambda: f.make_account_admin(f.make_account()),
    }[who]()
    path = f"/api/conversions/retrigger-runs/{run.pk}"

    # when
    read = call(client, user=user, method="GET", path=path, content_type=None)
    cancel = call(client, user=user, path=path + "/cancel")

    # then
    assert (read.status_code, cancel.status_code) == (404, 404)
    run.refresh_from_db()
    assert run.status == RetriggerRun.Status.QUEUED


@pytest.mark.django_db(transaction=True)
def test_the_creator_cancels_a_queued_run(client, queued_run):
    # given
    run, admin = queued_run

    # when
    response = call(client, user=admin, path=f"/api/conversions/retrigger-runs/{run.pk}/cancel/")

    # then
    assert response.status_code == 200
    assert response.json()["run"]["status"] == "cancelled"
    run.refresh_from_db()
    assert run.status == RetriggerRun.Status.CANCELLED


@pytest.mark.django_db
@pytest.mark.parametrize("run_id", ["999999", str(2**63), "9" * 40])
def test_unknown_run_ids_are_404(client, admin, run_id):
    response = call(
        client,
        user=admin,
        method="GET",
        path=f"/api/conversions/retrigger-runs/{run_id}",
        content_type=None,
    )
    assert response.status_code == 404
    assert "detail" in response.json()


@pytest.mark.django_db
def test_run_endpoints_need_a_token(client):
    response = call(
        client, method="GET", path="/api/conversions/retrigger-runs/1", content_type=None
    )
    assert response.status_code == 401


@pytest.mark.django_db
def test_the_schema_describes_every_answer(client):
    # when
    response = client.get("/api/schema/", headers={"accept": "application/json"})

    # then
    assert response.status_code == 200
    schema = json.loads(response.content)
    operation = schema["paths"]["/api/conversions/retrigger"]["post"]
    assert set(operation["responses"]) >= {
        "200",
        "202",
        "400",
        "401",
        "403",
        "405",
        "409",
        "415",
        "422",
        "429",
    }
    assert {p["name"] for p in operation["parameters"]} == {"force", "dryRun", "Idempotency-Key"}
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert body["additionalProperties"] is False
    assert "/api/conversions/retrigger-runs/{run_id}" in schema["paths"]


# --- Idempotency-Key ------------------------------------------------------------------------


@pytest.fixture
def receiver(httpserver, allow_loopback, account):
    """An admin and one conversion whose postback reaches a local receiver."""
    httpserver.expect_request("/pb").respond_with_data("ok")
    affiliate = f.make_affiliate(account)
    f.make_postback(affiliate, httpserver.url_for("/pb"))
    conversion = f.make_conversion(affiliate)
    return {"admin": f.make_account_admin(account), "conversion": conversion}


def keyed(client, user, body, key="k-1", query=""):
    return call(client, user=user, body=body, query=query, **{"idempotency-key": key})


@pytest.mark.django_db(transaction=True)
def test_the_same_key_and_body_replays_the_first_answer(client, httpserver, receiver):
    # given
    admin, pk = receiver["admin"], receiver["conversion"].pk
    first = keyed(client, admin, {"id": [pk], "sort": "id"})

    # when: the same criteria, spelled differently
    again = keyed(client, admin, {"sort": "ID", "id": [pk, pk]}, query="?force=false")

    # then
    assert (first.status_code, again.status_code) == (200, 200)
    assert again.json() == first.json()
    assert RetriggerRun.objects.count() == 1
    assert len(httpserver.log) == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("body", "query"), [({"id": [1]}, ""), ({}, "?force=1"), ({"limit": 5}, "")]
)
def test_the_same_key_with_another_body_or_flags_is_422(client, httpserver, receiver, body, query):
    # given
    admin = receiver["admin"]
    keyed(client, admin, {})

    # when
    response = keyed(client, admin, body, query=query)

    # then
    assert response.status_code == 422
    assert "detail" in response.json()
    assert RetriggerRun.objects.count() == 1
    assert len(httpserver.log) == 1


@pytest.mark.django_db(transaction=True)
def test_keys_are_per_user_and_expire(client, httpserver, receiver, account, settings):
    # given
    admin, other = receiver["admin"], f.make_account_admin(account)
    keyed(client, admin, {}, query="?force=1")

    # when
    by_other = keyed(client, other, {}, query="?force=1")
    IdempotencyRecord.objects.update(created_at=timezone.now() - timedelta(days=2))
    after_expiry = keyed(client, admin, {}, query="?force=1")

    # then
    assert (by_other.status_code, after_expiry.status_code) == (200, 200)
    assert RetriggerRun.objects.count() == 3
    assert len(httpserver.log) == 3


@pytest.mark.django_db(transaction=True)
def test_dry_runs_ignore_the_key(client, httpserver, receiver):
    # given
    admin = receiver["admin"]

    # when
    dry = keyed(client, admin, {"limit": 1}, query="?dryRun=1")
    other_dry = keyed(client, admin, {"limit": 2}, query="?dryRun=1")
    real = keyed(client, admin, {"limit": 1})

    # then
    assert (dry.status_code, other_dry.status_code, real.status_code) == (200, 200, 200)
    assert real.json()["run"]["status"] == "completed"
    assert len(httpserver.log) == 1


@pytest.mark.django_db(transaction=True)
def test_a_queued_answer_is_replayed_with_its_location(client, account, settings):
    # given
    settings.RETRIGGER_SYNC_MAX = 0
    admin = f.make_account_admin(account)
    affiliate = f.make_affiliate(account)
    f.make_postback(affiliate, "http://127.0.0.1:9/pb")
    f.make_conversion(affiliate)
    first = keyed(client, admin, {})

    # when
    again = keyed(client, admin, {})

    # then
    assert (first.status_code, again.status_code) == (202, 202)
    assert again["Location"] == first["Location"]
    assert again.json() == first.json()
    assert RetriggerRun.objects.count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize("key", ["", "x" * 256, "a b", "caf\u00e9"])
def test_a_malformed_key_is_400(client, admin, key):
    # when
    response = keyed(client, admin, {}, key=key)

    # then
    assert response.status_code == 400
    assert list(response.json()) == ["Idempotency-Key"]
    assert not IdempotencyRecord.objects.exists()


@pytest.mark.django_db
def test_a_refused_request_releases_its_key(client, admin, account):
    # given: the first use is refused (another account)
    refused = keyed(client, admin, {"accountId": [f.make_account().pk]})

    # when: the key is used again with a good body
    accepted = keyed(client, admin, {"accountId": [account.pk]})

    # then
    assert (refused.status_code, accepted.status_code) == (403, 200)
    assert IdempotencyRecord.objects.get().status_code == 200


@pytest.mark.django_db
def test_a_key_still_being_processed_past_the_wait_is_409(client, admin, settings):
    # given: another request holds the claim for the same body, and does not finish
    settings.RETRIGGER_IDEMPOTENCY_WAIT = 0.3
    info = parse_criteria({}).to_info(force=False, dry_run=False)
    IdempotencyRecord.objects.create(
        user=admin, key="k-1", fingerprint=idempotency.fingerprint(info), status_code=0, response={}
    )

    # when
    response = keyed(client, admin, {})

    # then
    assert response.status_code == 409
    assert not RetriggerRun.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_repeat_waits_for_the_first_answer_and_replays_it(client, admin, settings):
    # given: another request holds the claim and stores its answer a moment later
    settings.RETRIGGER_IDEMPOTENCY_WAIT = 10
    info = parse_criteria({}).to_info(force=False, dry_run=False)
    record = IdempotencyRecord.objects.create(
        user=admin, key="k-1", fingerprint=idempotency.fingerprint(info), status_code=0, response={}
    )
    first_answer = {"info": info, "run": {"id": None, "status": "completed"}, "results": []}

    def finish_first():
        time.sleep(0.3)
        idempotency.complete(record, status_code=200, document=first_answer, run_id=None)
        connection.close()

    worker = threading.Thread(target=finish_first)
    worker.start()

    # when
    response = keyed(client, admin, {})
    worker.join()

    # then the first answer is replayed and nothing ran again
    assert response.status_code == 200
    assert response.json() == first_answer
    assert not RetriggerRun.objects.exists()


# --- no internals on bugs -------------------------------------------------------------------


@pytest.mark.django_db
def test_an_unexpected_error_is_a_generic_json_500(client, admin, monkeypatch, caplog):
    # given: a bug inside the service
    def broken(**kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr("conversions.api.views.conversions_retrigger", broken)

    # when
    response = call(client, user=admin, body={})

    # then
    assert response.status_code == 500
    assert response.json() == {"detail": "Internal server error."}
    assert "secret" not in response.content.decode()
    assert "secret internals" in caplog.text
