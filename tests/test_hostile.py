"""Hostile input against the whole product, over real HTTP where it matters.

Every refusal of the contract (section 5) and of the shared cases 001-005 is sent to the
API with a conversion that *would* fire if anything got through; each must answer the
right status with JSON naming the bad key, leak no database text, store no run, attempt,
claim or idempotency record, and send nothing to the receiver.

Then the promises that protect receivers and secrets, end to end through the API:
the address guard (a second listener on 127.0.0.2 never hears from us while only
127.0.0.1/32 is open, whatever spelling, name or redirect leads there), save-time
refusal of such templates (admin form and `full_clean()`), `Idempotency-Key`, signed
POSTs verified with the `standardwebhooks` package, secrets kept out of stored URLs,
logs, admin pages and API answers, and the per-user throttle.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import uuid
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from django.core.exceptions import ValidationError
from django.test import Client
from django.utils import timezone
from standardwebhooks.webhooks import Webhook
from werkzeug import Response

from conversions.delivery import guard
from conversions.delivery.guard import parse_host_literal
from conversions.models import (
    Conversion,
    DeliveryAttempt,
    DeliveryClaim,
    IdempotencyRecord,
    Postback,
    RetriggerRun,
)
from tests import factories as f

URL = "/api/conversions/retrigger"
JSON = "application/json"
GOOD_UUID = "9b2f0c1e-1111-4a4a-8b8b-000000000001"
# Text that would betray a query reaching the database or a stack trace leaking out.
LEAKS = (
    "traceback",
    'file "',
    "sql",
    "psycopg",
    "integrityerror",
    "dataerror",
    "operationalerror",
    "programmingerror",
    "django.db",
    "order by",
    "syntax error",
    "where ",
)


# --- helpers -------------------------------------------------------------------------------


def call(
    client: Client,
    *,
    user=None,
    body: object = None,
    raw: bytes | str | None = None,
    query: str = "",
    method: str = "POST",
    content_type: str | None = JSON,
    path: str = URL,
    **headers,
):
    """One request as a client sends it; `body` is JSON-encoded, `raw` sent as is."""
    if user is not None:
        headers.setdefault("authorization", f"Token {f.token_for(user)}")
    data = raw if raw is not None else (b"" if body is None else json.dumps(body))
    extra = {} if content_type is None else {"CONTENT_TYPE": content_type}
    return client.generic(method, f"{path}{query}", data, headers=headers, **extra)


def assert_nothing_stored_or_sent(httpserver=None, *listeners) -> None:
    assert not RetriggerRun.objects.exists()
    assert not DeliveryAttempt.objects.exists()
    assert not DeliveryClaim.objects.exists()
    if httpserver is not None:
        assert httpserver.log == []
    for listener in listeners:
        assert listener.connections == 0


def assert_no_leak(response) -> None:
    text = response.content.decode("utf-8", "replace").lower()
    leaked = [word for word in LEAKS if word in text]
    assert not leaked, f"{leaked} in {text[:500]}"


class Listener:
    """A TCP listener that counts connections and answers 200; a receiver that must stay
    untouched."""

    def __init__(self, host: str, port: int = 0) -> None:
        self.sock = socket.create_server((host, port))
        self.host, self.port = host, self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def url(self, path: str = "/pb") -> str:
        return f"http://{self.host}:{self.port}{path}"

    def _loop(self) -> None:
        self.sock.settimeout(0.05)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            try:
                conn.settimeout(1)
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            except OSError:
                pass
            finally:
                conn.close()

    def assert_was_listening(self) -> None:
        """Proves a zero count means "never reached", not "not there"."""
        before = self.connections
        socket.create_connection((self.host, self.port), timeout=2).close()
        deadline = time.monotonic() + 5
        while self.connections == before and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.connections == before + 1

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(timeout=5)


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def fast(allow_loopback):
    """127.0.0.1/32 open (as in the demo), one quick try per pair."""
    allow_loopback.POSTBACK_MAX_ATTEMPTS = 1
    allow_loopback.POSTBACK_RETRY_BASE = 0.01
    allow_loopback.POSTBACK_RETRY_CAP = 0.05
    allow_loopback.POSTBACK_CONNECT_TIMEOUT = 1.0
    allow_loopback.POSTBACK_READ_TIMEOUT = 2.0
    allow_loopback.POSTBACK_ATTEMPT_DEADLINE = 5.0
    return allow_loopback


@pytest.fixture
def world(httpserver, fast):
    """An admin's account, one affiliate whose postback reaches a local receiver, and one
    approved conversion that fires if a request gets through."""
    httpserver.expect_request("/pb").respond_with_data("ok")
    account = f.make_account()
    affiliate = f.make_affiliate(account)
    postback = f.make_postback(affiliate, httpserver.url_for("/pb") + "?c={conversion_id}")
    return {
        "account": account,
        "affiliate": affiliate,
        "postback": postback,
        "conversion": f.make_conversion(affiliate),
        "admin": f.make_account_admin(account),
    }


@pytest.fixture
def other_host():
    """A second receiver on 127.0.0.2, outside the allow-list."""
    try:
        listener = Listener("127.0.0.2")
    except OSError:
        pytest.skip("127.0.0.2 is not available on this machine")
    yield listener
    listener.close()


@pytest.fixture
def resolver(monkeypatch):
    """The guard's one DNS lookup, answered from a table of names we own."""
    answers: dict[str, list[str]] = {}

    def fake(host: str, port: int):
        literal = parse_host_literal(host)
        if literal is not None:
            return [literal]
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [parse_host_literal(a) for a in answers[host]]

    monkeypatch.setattr(guard, "resolve_host", fake)
    return answers


# --- every refusal of the contract -----------------------------------------------------------
# Refusals are tested inside a rolled-back transaction (fast on PostgreSQL): the status
# check fails first if anything got through, and nothing reaches another thread.

MAX_LIST = 10_000
BAD_BODIES = {
    # unknown keys (case 003 typo included)
    "unknown-key": ({"affiliateIds": [7]}, "affiliateIds"),
    "unknown-key-case": ({"AffiliateId": [7]}, "AffiliateId"),
    "unknown-key-proto": ({"__proto__": {"limit": 1}}, "__proto__"),
    # a body that is not an object
    "array-body": ([], "non_field_errors"),
    "string-body": ("text", "non_field_errors"),
    "number-body": (7, "non_field_errors"),
    "null-body": (None, "non_field_errors"),
    # wrong types; a scalar or a string where a list belongs (case 003)
    "scalar-for-list": ({"affiliateId": 7}, "affiliateId"),
    "csv-for-list": ({"affiliateId": "7,8"}, "affiliateId"),
    "object-for-list": ({"brandIds": {"0": 1}}, "brandIds"),
    "string-item": ({"id": ["1"]}, "id"),
    "float-item": ({"id": [1.5]}, "id"),
    "bool-item": ({"conversionTypes": [True]}, "conversionTypes"),
    "null-item": ({"trafficSourceId": [None]}, "trafficSourceId"),
    "nested-list": ({"accountId": [[1]]}, "accountId"),
    "number-date": ({"fromDate": 20260101}, "fromDate"),
    "list-sort": ({"sort": ["id"]}, "sort"),
    # ranges: int32/int64 and below 1
    "id-over-int64": ({"id": [2**63]}, "id"),
    "id-zero": ({"id": [0]}, "id"),
    "id-negative": ({"id": [-1]}, "id"),
    "affiliate-over-int32": ({"affiliateId": [2**31]}, "affiliateId"),
    "account-zero": ({"accountId": [0]}, "accountId"),
    "type-over-int32": ({"conversionTypes": [2**31]}, "conversionTypes"),
    "brand-negative": ({"brandIds": [-5]}, "brandIds"),
    "source-huge": ({"trafficSourceId": [2**70]}, "trafficSourceId"),
    "list-too-long": ({"id": list(range(1, MAX_LIST + 2))}, "id"),
    # malformed UUIDs (case 002)
    "uuid-empty-member": ({"clickIds": ["", GOOD_UUID]}, "clickIds"),
    "uuid-bad-digit": ({"clickIds": [GOOD_UUID[:-1] + "z"]}, "clickIds"),
    "uuid-scalar": ({"clickIds": GOOD_UUID}, "clickIds"),
    "uuid-no-hyphens": ({"clickIds": [GOOD_UUID.replace("-", "")]}, "clickIds"),
    "uuid-braces": ({"clickIds": ["{" + GOOD_UUID + "}"]}, "clickIds"),
    "uuid-urn": ({"clickIds": ["urn:uuid:" + GOOD_UUID]}, "clickIds"),
    "uuid-nul": ({"clickIds": ["\x00"]}, "clickIds"),
    "uuid-number": ({"clickIds": [1]}, "clickIds"),
    # malformed dates
    "date-feb-30": ({"fromDate": "2026-02-30"}, "fromDate"),
    "date-month-13": ({"toDate": "2026-13-01"}, "toDate"),
    "date-word": ({"updatedSince": "yesterday"}, "updatedSince"),
    "date-empty": ({"createdFrom": ""}, "createdFrom"),
    "date-hour-25": ({"fromDate": "2026-01-01T25:00:00Z"}, "fromDate"),
    "date-offset-24h": ({"toDate": "2026-01-01T00:00:00+24:00"}, "toDate"),
    "date-other-digits": ({"fromDate": "\u0662\u0660\u0662\u0666-01-01"}, "fromDate"),
    "date-overflow": ({"fromDate": "9999-12-31T23:59:59-01:00"}, "fromDate"),
    "date-year-zero": ({"toDate": "0000-01-01"}, "toDate"),
    "date-nul": ({"createdFrom": "2026-01-01\x00"}, "createdFrom"),
    # rules across keys
    "from-after-to": ({"fromDate": "2026-02-02", "toDate": "2026-02-01"}, "non_field_errors"),
    "too-many-items": (
        {"id": list(range(1, 7001)), "brandIds": list(range(1, 7001)), "affiliateId": []}
        | {"accountId": list(range(1, 7001))},
        "non_field_errors",
    ),
    # paging (case 005)
    "offset-negative": ({"offset": -1}, "offset"),
    "offset-word": ({"offset": "ten"}, "offset"),
    "offset-over-int32": ({"offset": 2**31}, "offset"),
    "limit-negative": ({"limit": -5}, "limit"),
    "limit-zero": ({"limit": 0}, "limit"),
    "limit-over-max": ({"limit": 100_000_000}, "limit"),
    "limit-float": ({"limit": 1.0}, "limit"),
    "limit-bool": ({"limit": True}, "limit"),
    "limit-string": ({"limit": "10"}, "limit"),
    # sort (case 001) and its relatives
    "sort-double-minus": ({"sort": "--date"}, "sort"),
    "sort-comma": ({"sort": ","}, "sort"),
    "sort-minus": ({"sort": "-"}, "sort"),
    "sort-empty-key": ({"sort": "id,,date"}, "sort"),
    "sort-desc-word": ({"sort": "date desc"}, "sort"),
    "sort-unknown": ({"sort": "password"}, "sort"),
    "sort-orm-path": ({"sort": "affiliate__account__name"}, "sort"),
    "sort-sql": ({"sort": "id; DROP TABLE conversions_conversion"}, "sort"),
    "sort-repeated": ({"sort": "id,-id"}, "sort"),
    "sort-nul": ({"sort": "id\x00"}, "sort"),
    "sort-number": ({"sort": 1}, "sort"),
}

BAD_RAW = {
    "json-truncated": b"{",
    "json-trailing-comma": b'{"id": [1,]}',
    "json-nan": b'{"limit": NaN}',
    "json-infinity": b'{"offset": -Infinity}',
    "json-not-utf8": b"\xff\xfe{}",
    "json-trailing-garbage": b'{"limit": 1} {"limit": 2}',
    "json-deep": b"[" * 50_000 + b"]" * 50_000,
    "json-single-quotes": b"{'limit': 1}",
}

# json accepts an unpaired surrogate escape, but the result is no Unicode text: as a key
# echoed in the 400 it crashed the renderer (a 500). Refused wherever it sits.
LONE_SURROGATES = {
    "key": r'{"\ud800": 1}',
    "key-tail": r'{"a\udfff": 1}',
    "key-beside-good": r'{"id": [1], "x\ud800": null}',
    "list-item": r'{"clickIds": ["\udc00"]}',
    "value": r'{"sort": "id\ud800"}',
    "pair-reversed": r'{"sort": "\udc00\ud800"}',
    "nested": r'{"brandIds": {"a": [{"\udbff": 1}]}}',
    "body": r'"\ud800"',
}

# json keeps the last of repeated keys: a later null would silently drop a filter.
DUPLICATE_KEYS = {
    "same-value": ('{"id": [1], "id": [1]}', "id"),
    "other-value": ('{"id": [1], "id": [2]}', "id"),
    "later-null": ('{"affiliateId": [5], "affiliateId": null}', "affiliateId"),
    "escaped-spelling": (r'{"limit": 1, "\u006cimit": 2}', "limit"),
    "nested": ('{"brandIds": {"0": 1, "0": 2}}', "0"),
    "surrogate-key": (r'{"\ud800": 1, "\ud800": 2}', "\ud800"),
}

BAD_QUERIES = {
    # flags (case 004)
    "force-empty": ("?force=", "force"),
    "force-no": ("?force=no", "force"),
    "force-2": ("?force=2", "force"),
    "force-twice": ("?force=1&force=1", "force"),
    "dryrun-yes": ("?dryRun=yes", "dryRun"),
    "dryrun-empty": ("?dryRun=", "dryRun"),
    # criteria belong in the body
    "query-criteria": ("?limit=5", "limit"),
    "query-format": ("?format=xml", "format"),
    "query-case": ("?dryrun=1", "dryrun"),
    # bytes that are no UTF-8 (a surrogate's encoding) decode to U+FFFD, never a 500
    "force-surrogate-bytes": ("?force=%ED%A0%80", "force"),
    "name-surrogate-bytes": ("?%ED%A0%80=1", "\ufffd" * 3),
}


@pytest.mark.django_db
@pytest.mark.parametrize(("body", "key"), BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_bad_bodies_are_400_naming_the_key(client, httpserver, world, body, key):
    # when
    response = call(client, user=world["admin"], raw=json.dumps(body))

    # then
    assert response.status_code == 400
    assert response["Content-Type"].startswith(JSON)
    errors = response.json()
    assert key in errors
    assert all(isinstance(m, str) for messages in errors.values() for m in messages)
    assert_no_leak(response)
    assert_nothing_stored_or_sent(httpserver)


@pytest.mark.django_db
@pytest.mark.parametrize("raw", BAD_RAW.values(), ids=BAD_RAW.keys())
def test_malformed_json_is_400_naming_the_body(client, httpserver, world, raw):
    # when
    response = call(client, user=world["admin"], raw=raw)

    # then
    assert response.status_code == 400
    assert list(response.json()) == ["non_field_errors"]
    assert_no_leak(response)
    assert_nothing_stored_or_sent(httpserver)


@pytest.mark.django_db
@pytest.mark.parametrize("raw", LONE_SURROGATES.values(), ids=LONE_SURROGATES.keys())
def test_a_lone_surrogate_escape_is_400_naming_the_body(client, httpserver, world, raw):
    # when
    response = call(client, user=world["admin"], raw=raw)

    # then
    assert response.status_code == 400
    assert response.json() == {
        "non_field_errors": [
            "Malformed JSON: text that is not valid Unicode "
            "(an unpaired UTF-16 surrogate escape such as \\ud800)."
        ]
    }
    assert_nothing_stored_or_sent(httpserver)


@pytest.mark.django_db
def test_a_surrogate_pair_escape_is_ordinary_text(client, httpserver, world):
    # when: a valid pair (U+1F600) where a sort column belongs
    response = call(client, user=world["admin"], raw=r'{"sort": "\ud83d\ude00"}')

    # then: refused as an unknown column, not as broken text
    assert response.status_code == 400
    assert list(response.json()) == ["sort"]
    assert_nothing_stored_or_sent(httpserver)


@pytest.mark.django_db
@pytest.mark.parametrize(("raw", "key"), DUPLICATE_KEYS.values(), ids=DUPLICATE_KEYS.keys())
def test_a_duplicate_key_is_400_naming_it(client, httpserver, world, raw, key):
    # when
    response = call(client, user=world["admin"], raw=raw)

    # then
    assert response.status_code == 400
    assert response.json() == {
        "non_field_errors": [
            f"Malformed JSON: duplicate key {json.dumps(key)}; give each key once."
        ]
    }
    assert_nothing_stored_or_sent(httpserver)


@pytest.mark.django_db
@pytest.mark.parametrize(("query", "key"), BAD_QUERIES.values(), ids=BAD_QUERIES.keys())
def test_bad_query_flags_are_400_naming_the_flag(client, httpserver, world, query, key):
    # when
    response = call(client, user=world["admin"], body={}, query=query)

    # then
    assert response.status_code == 400
    assert key in response.json()
    assert_no_leak(response)
    assert_nothing_stored_or_sent(httpserver)


@pytest.mark.django_db
@pytest.mark.parametrize("query", ["", "?dryRun=1"])
@pytest.mark.parametrize("key", ["", " ", "a b", "x" * 256, "caf\u00e9", "tab\tkey"])
def test_a_malformed_idempotency_key_is_400_on_real_and_dry_runs(
    client, httpserver, world, key, query
):
    # when
    response = call(client, user=world["admin"], body={}, query=query, **{"idempotency-key": key})

    # then
    assert response.status_code == 400
    assert list(response.json()) == ["Idempotency-Key"]
    assert not IdempotencyRecord.objects.exists()
    assert_nothing_stored_or_sent(httpserver)


REFUSALS = {
    "no-token": dict(status=401, user=None),
    "bad-token": dict(status=401, authorization="Token " + "0" * 40),
    "token-with-nul": dict(status=401, authorization="Token abc\x00def"),
    "basic-auth": dict(status=401, authorization="Basic YWRtaW46YWRtaW4="),
    "member": dict(status=403, who="member"),
    "nobody": dict(status=403, who="nobody"),
    "foreign-account": dict(status=403, body="foreign", names="accountId"),
    "method-get": dict(status=405, method="GET"),
    "method-put": dict(status=405, method="PUT"),
    "method-delete": dict(status=405, method="DELETE"),
    "form-body": dict(
        status=415, raw="affiliateId=7", content_type="application/x-www-form-urlencoded"
    ),
    "text-body": dict(status=415, raw="{}", content_type="text/plain"),
    "xml-body": dict(status=415, raw="<a/>", content_type="application/xml"),
    "multipart": dict(status=415, raw="--x--", content_type="multipart/form-data; boundary=x"),
    "too-large": dict(status=413, body="large"),
}


@pytest.mark.django_db
@pytest.mark.parametrize("case", REFUSALS.values(), ids=REFUSALS.keys())
def test_other_refusals_answer_json_and_fire_nothing(client, httpserver, world, settings, case):
    # given
    case = dict(case)
    status = case.pop("status")
    who = case.pop("who", "admin")
    user = {
        "admin": lambda: world["admin"],
        "member": lambda: f.make_member(world["account"]),
        "nobody": lambda: f.make_user(),
    }[who]()
    if "user" in case:
        user = case.pop("user")
    names = case.pop("names", None)
    body = case.pop("body", {})
    if body == "foreign":
        body = {"accountId": [world["account"].pk, f.make_account().pk]}
    elif body == "large":
        settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
        body = {"id": list(range(1, 1000))}

    # when
    response = call(client, user=user, body=body, **case)

    # then
    assert response.status_code == status
    assert "detail" in response.json()
    if names:
        assert names in response.json()["detail"]
    assert_no_leak(response)
    assert_nothing_stored_or_sent(httpserver)


@pytest.mark.django_db
def test_the_throttle_is_per_user_429_with_retry_after_and_fires_nothing(
    client, httpserver, world, settings
):
    # given: two requests a minute; both used by dry runs, which fire nothing
    settings.RETRIGGER_THROTTLE_RATE = "2/min"
    admin = world["admin"]
    for _ in range(2):
        assert call(client, user=admin, query="?dryRun=1").status_code == 200

    # when: a request that would fire
    throttled = call(client, user=admin, body={}, **{"idempotency-key": "t-1"})

    # then
    assert throttled.status_code == 429
    assert "detail" in throttled.json()
    assert 1 <= int(throttled["Retry-After"]) <= 60
    assert not IdempotencyRecord.objects.exists()
    assert_nothing_stored_or_sent(httpserver)

    # ... and another admin of the same account is not throttled by it
    other = call(client, user=f.make_account_admin(world["account"]), query="?dryRun=1")
    assert other.status_code == 200


@pytest.mark.django_db
@pytest.mark.parametrize(
    "path",
    [
        "/api/conversions/retrigger-runs/abc",
        "/api/conversions/retrigger-runs/-1",
        "/api/conversions/retrigger-runs/1.5/cancel",
        "/api/conversions/retrigger-runs/null%2Cnull",
        "/api/conversions/nope",
    ],
)
def test_unknown_api_paths_are_json_404_after_the_401(client, path):
    # given
    user = f.make_user(superuser=True)

    # when
    anonymous = call(client, method="GET", path=path, content_type=None)
    known = call(client, user=user, method="GET", path=path, content_type=None)

    # then
    assert anonymous.status_code == 401
    assert known.status_code == 404
    assert known.json() == {"detail": "Not found."}


@pytest.mark.django_db
def test_an_empty_body_without_a_content_type_is_an_empty_object_under_runserver(client, world):
    # given: wsgiref (runserver) reports a missing Content-Type as "text/plain"
    admin = world["admin"]

    # when
    empty = call(client, user=admin, raw=b"", content_type="text/plain", query="?dryRun=1")
    text = call(client, user=admin, raw=b"{}", content_type="text/plain", query="?dryRun=1")

    # then
    assert empty.status_code == 200
    assert empty.json()["run"]["matched"] == 1
    assert text.status_code == 415


# --- the address guard, end to end ----------------------------------------------------------


def _blocked_targets(port: int) -> dict[str, str]:
    """Every way a template can name 127.0.0.2 (the allow-list opens 127.0.0.1/32 only)."""
    return {
        "literal": f"http://127.0.0.2:{port}/pb?c={{conversion_id}}",
        "decimal": f"http://2130706434:{port}/pb",
        "hex": f"http://0x7f000002:{port}/pb",
        "dotted-hex": f"http://0x7f.0.0.2:{port}/pb",
        "octal": f"http://0177.0.0.02:{port}/pb",
        "short": f"http://127.2:{port}/pb",
        "trailing-dot": f"http://127.0.0.2.:{port}/pb",
        "userinfo-decoy": f"http://127.0.0.1:{port}@127.0.0.2:{port}/pb",
        "ipv4-mapped": f"http://[::ffff:127.0.0.2]:{port}/pb",
        "ipv4-mapped-hex": f"http://[::ffff:7f00:2]:{port}/pb",
        "nat64": f"http://[64:ff9b::7f00:2]:{port}/pb",
        "name": f"http://tracker.example:{port}/pb",
        "name-two-answers": f"http://mixed.example:{port}/pb",
    }


GUARD_CASES = list(_blocked_targets(1))


def _fire(client, world, *, body=None, query="?force=1"):
    response = call(
        client,
        user=world["admin"],
        body=body or {"affiliateId": [world["affiliate"].pk]},
        query=query,
    )
    assert response.status_code == 200, response.content
    return response.json()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("target", GUARD_CASES)
def test_a_template_leading_to_127_0_0_2_is_blocked_through_the_api(
    client, httpserver, world, other_host, resolver, target, method
):
    # given: fixture-style rows (saving bypasses the save-time check); the guard decides
    resolver["tracker.example"] = ["127.0.0.2"]
    resolver["mixed.example"] = ["127.0.0.2", "10.0.0.1"]
    Postback.objects.filter(pk=world["postback"].pk).update(
        url=_blocked_targets(other_host.port)[target], method=method, secret="whsec_c2VjcmV0"
    )

    # when
    document = _fire(client, world)

    # then
    pair = document["results"][0]["postbacks"][0]
    assert (pair["outcome"], pair["error"], pair["statusCode"]) == (
        "failed",
        "blocked_address",
        None,
    )
    assert document["run"]["failed"] == 1
    attempts = list(DeliveryAttempt.objects.all())
    assert [a.error for a in attempts] == ["blocked_address"]
    assert not DeliveryClaim.objects.exists()
    assert other_host.connections == 0
    assert httpserver.log == []
    other_host.assert_was_listening()


REDIRECTS = {
    "literal": "http://127.0.0.2:{port}/stolen",
    "decimal": "http://2130706434:{port}/stolen",
    "name": "http://tracker.example:{port}/stolen",
    "ipv4-mapped": "http://[::ffff:127.0.0.2]:{port}/stolen",
}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("status", [302, 307])
@pytest.mark.parametrize("target", REDIRECTS.values(), ids=REDIRECTS.keys())
def test_a_redirect_from_the_allowed_receiver_to_127_0_0_2_is_blocked(
    client, httpserver, world, other_host, resolver, target, status
):
    # given: the allowed receiver answers with a redirect to the other host
    resolver["tracker.example"] = ["127.0.0.2"]
    location = target.format(port=other_host.port)
    httpserver.clear()
    httpserver.expect_request("/pb").respond_with_response(
        Response(status=status, headers={"Location": location})
    )

    # when
    document = _fire(client, world)

    # then: the first hop went out, the second never
    pair = document["results"][0]["postbacks"][0]
    assert (pair["outcome"], pair["error"]) == ("failed", "blocked_address")
    assert len(httpserver.log) == 1
    assert other_host.connections == 0
    assert [a.error for a in DeliveryAttempt.objects.all()] == ["blocked_address"]
    other_host.assert_was_listening()


@pytest.mark.django_db(transaction=True)
def test_the_allowed_receiver_still_gets_its_postback(client, httpserver, world, other_host):
    # Control for the tests above: the same set-up with the allowed address delivers.
    document = _fire(client, world)

    assert document["results"][0]["postbacks"][0]["outcome"] == "delivered"
    assert len(httpserver.log) == 1
    assert other_host.connections == 0


# --- save-time refusal of such templates ---------------------------------------------------


def _save_time_targets() -> dict[str, str]:
    # Names are left to the send-time guard (DNS changes); every literal spelling is not.
    return {k: v for k, v in _blocked_targets(8080).items() if not k.startswith("name")}


SAVE_CASES = _save_time_targets()


@pytest.mark.django_db
@pytest.mark.parametrize("url", SAVE_CASES.values(), ids=SAVE_CASES.keys())
def test_full_clean_refuses_a_template_naming_a_blocked_address(world, url):
    # given
    postback = Postback(affiliate=world["affiliate"], url=url, method="GET")

    # when
    with pytest.raises(ValidationError) as caught:
        postback.full_clean()

    # then
    message = " ".join(m for ms in caught.value.message_dict.values() for m in ms)
    assert "blocked address" in message
    assert urlsplit(url).hostname in message


@pytest.mark.django_db
@pytest.mark.parametrize("url", SAVE_CASES.values(), ids=SAVE_CASES.keys())
def test_the_admin_form_refuses_a_template_naming_a_blocked_address(world, url):
    # given
    root = f.make_user(superuser=True)
    client = Client()
    client.force_login(root)
    before = Postback.objects.count()

    # when
    response = client.post(
        "/admin/conversions/postback/add/",
        {
            "affiliate": world["affiliate"].pk,
            "url": url,
            "method": "GET",
            "conversion_type": "",
            "is_active": "on",
            "secret": "",
        },
    )

    # then: the form comes back with the reason, nothing saved
    assert response.status_code == 200
    page = response.content.decode()
    assert "errorlist" in page
    assert "blocked address" in page
    assert Postback.objects.count() == before


@pytest.mark.django_db
def test_the_admin_form_refuses_editing_a_postback_to_a_blocked_address(world):
    # given
    root = f.make_user(superuser=True)
    client = Client()
    client.force_login(root)
    postback = world["postback"]
    original = postback.url

    # when
    response = client.post(
        f"/admin/conversions/postback/{postback.pk}/change/",
        {
            "affiliate": world["affiliate"].pk,
            "url": "http://2130706434/pb",
            "method": "GET",
            "conversion_type": "",
            "is_active": "on",
            "secret": "",
        },
    )

    # then
    assert response.status_code == 200
    assert "blocked address" in response.content.decode()
    postback.refresh_from_db()
    assert postback.url == original


# --- Idempotency-Key ----------------------------------------------------------------------


def _keyed(client, world, body, *, key="idem-1", query=""):
    return call(client, user=world["admin"], body=body, query=query, **{"idempotency-key": key})


@pytest.mark.django_db(transaction=True)
def test_a_replay_within_24h_returns_the_first_answer_and_fires_nothing(client, httpserver, world):
    # given: the first request fired once
    body = {"affiliateId": [world["affiliate"].pk]}
    first = _keyed(client, world, body, query="?force=1")
    assert first.status_code == 200
    fired, attempts = len(httpserver.log), DeliveryAttempt.objects.count()
    # ... almost a day ago
    IdempotencyRecord.objects.update(created_at=timezone.now() - timedelta(hours=23, minutes=59))

    # when: the same key, user, body (spelled differently) and flags
    again = _keyed(client, world, {"affiliateId": [world["affiliate"].pk] * 2}, query="?force=true")

    # then
    assert again.status_code == first.status_code
    assert again.json() == first.json()
    assert (len(httpserver.log), DeliveryAttempt.objects.count()) == (fired, attempts)
    assert RetriggerRun.objects.count() == 1
    assert not DeliveryClaim.objects.exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("body", "query"),
    [
        ({"limit": 5}, "?force=1"),
        ({}, ""),
        ({}, "?force=1&dryRun=0"),
        ({"sort": "-id"}, "?force=1"),
    ],
)
def test_the_same_key_with_another_body_or_flags_is_422_and_fires_nothing(
    client, httpserver, world, body, query
):
    # given
    first = _keyed(client, world, {}, query="?force=1")
    assert first.status_code == 200
    fired = len(httpserver.log)

    # when
    response = _keyed(client, world, body, query=query)

    # then
    if query == "?force=1&dryRun=0":
        # the same body and flags spelled another way: a replay, not a mismatch
        assert response.status_code == 200
    else:
        assert response.status_code == 422
        assert "detail" in response.json()
    assert len(httpserver.log) == fired
    assert RetriggerRun.objects.count() == 1
    assert not DeliveryClaim.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_dry_runs_ignore_the_key(client, httpserver, world):
    # given: the key is taken by a real run with another body
    _keyed(client, world, {"limit": 1}, query="?force=1")
    fired = len(httpserver.log)

    # when
    dry = _keyed(client, world, {"limit": 2}, query="?dryRun=1")

    # then: neither a 422 nor a replay; a fresh dry run
    assert dry.status_code == 200
    assert dry.json()["run"] == {**dry.json()["run"], "id": None, "status": "dry_run"}
    assert len(httpserver.log) == fired
    assert IdempotencyRecord.objects.count() == 1


# --- signed POSTs ---------------------------------------------------------------------------

SECRET = "whsec_" + "c2lnbmluZy1zZWNyZXQtZm9yLXRlc3Rz"  # base64 of a test key


@pytest.mark.django_db(transaction=True)
def test_a_signed_post_carries_the_stable_event_id_and_verifies(client, httpserver, world):
    # given
    Postback.objects.filter(pk=world["postback"].pk).update(method="POST", secret=SECRET)
    conversion, postback = world["conversion"], world["postback"]
    expected_id = str(DeliveryAttempt.event_id_for(conversion.pk, postback.pk))

    # when: fired twice (force re-fires the delivered pair)
    _fire(client, world)
    _fire(client, world)

    # then
    requests = [request for request, _ in httpserver.log]
    assert len(requests) == 2
    verifier = Webhook(SECRET)
    for request in requests:
        assert request.method == "POST"
        assert request.headers["webhook-id"] == expected_id
        payload = verifier.verify(request.get_data(), dict(request.headers))
        assert payload["event_id"] == expected_id
        assert payload["conversion_id"] == str(conversion.pk)
    assert {str(a.event_id) for a in DeliveryAttempt.objects.all()} == {expected_id}
    # ... and a tampered body does not verify
    tampered = requests[0].get_data().replace(b"event_id", b"event_iD")
    with pytest.raises(Exception):  # noqa: B017  (the package's own verification error)
        verifier.verify(tampered, dict(requests[0].headers))


# --- secrets ----------------------------------------------------------------------------------

URL_SECRETS = ("pa55-w0rd-x", "tok-s3cret-x", "ak-s3cret-x")


@pytest.mark.django_db(transaction=True)
def test_secrets_never_reach_stored_urls_logs_admin_pages_or_api_answers(
    client, httpserver, world, caplog
):
    # given: credentials in the template, a signing secret, and a second postback to a
    # closed port whose error message quotes the URL
    caplog.set_level(logging.DEBUG)
    signing = "whsec_" + "bm90LWluLWFueS1sb2c="
    secrets = (*URL_SECRETS, signing, signing.removeprefix("whsec_"))
    base = httpserver.url_for("/pb").replace("http://", f"http://user:{URL_SECRETS[0]}@")
    template = f"{base}?token={URL_SECRETS[1]}&apikey={URL_SECRETS[2]}&c={{conversion_id}}"
    Postback.objects.filter(pk=world["postback"].pk).update(
        url=template, method="POST", secret=signing
    )
    closed = socket.create_server(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    f.make_postback(
        world["affiliate"],
        f"http://127.0.0.1:{closed_port}/pb?secret={URL_SECRETS[1]}",
        secret=signing,
    )

    # when
    response = call(client, user=world["admin"], body={}, query="?force=1")

    # then: it was sent with the credentials ...
    assert response.status_code == 200
    assert URL_SECRETS[1] in httpserver.log[0][0].url
    # ... and they are nowhere else
    attempts = list(DeliveryAttempt.objects.all())
    assert len(attempts) == 2
    stored = " ".join(f"{a.url} {a.error_detail} {a.response_excerpt}" for a in attempts)
    assert "***" in stored
    pages = {"api": response.content.decode()}
    root = f.make_user(superuser=True)
    viewer = f.make_account_admin(world["account"])
    viewer.is_staff = True
    viewer.save()
    run = RetriggerRun.objects.get()
    for who, user in (("root", root), ("account-admin", viewer)):
        admin_client = Client()
        admin_client.force_login(user)
        for path in (
            "/admin/conversions/deliveryattempt/",
            *(f"/admin/conversions/deliveryattempt/{a.pk}/change/" for a in attempts),
            "/admin/conversions/retriggerrun/",
            f"/admin/conversions/retriggerrun/{run.pk}/change/",
        ):
            page = admin_client.get(path)
            assert page.status_code == 200, (who, path)
            pages[f"{who} {path}"] = page.content.decode()
    # Postback pages show the template to superusers (they edit it); viewers never
    viewer_client = Client()
    viewer_client.force_login(viewer)
    for path in (
        "/admin/conversions/postback/",
        f"/admin/conversions/postback/{world['postback'].pk}/change/",
    ):
        page = viewer_client.get(path)
        assert page.status_code == 200, path
        pages[f"account-admin {path}"] = page.content.decode()
    # Every record but the test receiver's own (werkzeug logs what it was sent).
    logs = "\n".join(
        record.getMessage() for record in caplog.records if not record.name.startswith("werkzeug")
    )
    # the capture did see DEBUG records of the HTTP side (uvloop logs nothing of its own)
    assert "conversions.delivery.transport" in {r.name for r in caplog.records}
    places = {"stored": stored, "logs": logs, **pages}
    for where, text in places.items():
        for secret in secrets:
            assert secret not in text, f"{secret!r} in {where}"


# --- case 002: any case of a click id (the fuzzer's UUIDs are lower-case) --------------------


@pytest.mark.django_db
def test_click_id_case_does_not_change_the_selection(client, world):
    # given
    Conversion.objects.filter(pk=world["conversion"].pk).update(click_id=uuid.UUID(GOOD_UUID))

    # when
    answers = [
        call(client, user=world["admin"], body={"clickIds": [spelling]}, query="?dryRun=1")
        for spelling in (GOOD_UUID, GOOD_UUID.upper())
    ]

    # then
    assert [a.json()["run"]["matched"] for a in answers] == [1, 1]
    assert answers[0].json()["info"] == answers[1].json()["info"]
