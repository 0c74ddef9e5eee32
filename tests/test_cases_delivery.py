"""Shared cases 006 (macro encoding), 007 (hostile receivers) and 008 (Retry-After forms)."""

from __future__ import annotations

import random
import socket
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from urllib.parse import parse_qs, unquote

import pytest

from conversions.delivery.macros import expand_url
from conversions.delivery.retry import backoff_delay, is_retryable, parse_retry_after
from tests import test_transport
from tests.test_transport import SLACK, RawServer, prepared, send_attempt, timed

# The receivers and limits of the transport tests, shared as fixtures.
fast = test_transport.fast
raw_server = test_transport.raw_server
_receiver_server = test_transport._receiver_server
receiver = test_transport.receiver
session = test_transport.session

# --- 006: macro values that need encoding ------------------------------------------------

SUB1 = "x&y=z w/ü%41"


def test_case_006_values_are_encoded_exactly_once(fast, receiver, session):
    # given
    receiver.expect_request("/pb").respond_with_data("ok")
    template = receiver.url_for("/pb") + "?cid={click_id}&s1={sub1}&amt={payout}"

    # when
    outcome = send_attempt(prepared(template, sub1=SUB1, payout="7.10"), session=session)

    # then
    assert outcome.delivered
    query = receiver.log[0][0].query_string.decode()
    assert "s1=x%26y%3Dz%20w%2F%C3%BC%2541" in query.split("&")
    params = parse_qs(query, keep_blank_values=True)
    assert params["s1"] == [SUB1]  # decoding once gives the original back
    assert "y" not in params
    assert params["amt"] == ["7.10"]
    assert params["cid"] == ["9b2f0c1e-1111-4a4a-8b8b-000000000001"]


def test_case_006_encoded_braces_expand_like_plain_ones(fast, receiver, session):
    # given
    receiver.expect_request("/pb").respond_with_data("ok")
    plain = receiver.url_for("/pb") + "?cid={click_id}"
    encoded = receiver.url_for("/pb") + "?cid=%7Bclick_id%7D"

    # when
    outcomes = [send_attempt(prepared(url), session=session) for url in (plain, encoded)]

    # then
    assert all(o.delivered for o in outcomes)
    sent = [req.query_string.decode() for req, _ in receiver.log]
    assert sent == ["cid=9b2f0c1e-1111-4a4a-8b8b-000000000001"] * 2
    for query in sent:
        assert "{" not in query and "}" not in query
        assert "%7B" not in query.upper() and "click_id" not in query


@pytest.mark.parametrize(
    "template",
    [
        "https://tracker.example/pb?cid={click_id}&s1={sub1}&amt={payout}",
        "https://tracker.example/pb?cid=%7Bclick_id%7D&s1=%7bsub1%7d&amt=%7Bpayout%7d",
    ],
)
def test_case_006_expand_url(template):
    # when
    url = expand_url(template, {"click_id": "c-1", "sub1": SUB1, "payout": "7.10"})

    # then
    assert url == "https://tracker.example/pb?cid=c-1&s1=x%26y%3Dz%20w%2F%C3%BC%2541&amt=7.10"
    assert unquote(url.split("s1=")[1].split("&")[0]) == SUB1


# --- 007: receivers that hang, trickle or flood ------------------------------------------


def hang(server: RawServer, conn: socket.socket) -> None:
    server.read_request(conn)
    server.stopped.wait()


def trickle_headers(server: RawServer, conn: socket.socket) -> None:
    server.read_request(conn)
    for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok":
        if server.stopped.wait(0.3):
            return
        server.send(conn, bytes([byte]))


def trickle_body(server: RawServer, conn: socket.socket) -> None:
    server.read_request(conn)
    server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    while not server.stopped.wait(0.3):
        server.send(conn, b"z")


def flood(server: RawServer, conn: socket.socket) -> None:
    server.read_request(conn)
    server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 2147483648\r\n\r\n")
    block = b"F" * 65536
    while not server.stopped.is_set():
        server.send(conn, block)


def endless_chunks(server: RawServer, conn: socket.socket) -> None:
    server.read_request(conn)
    server.send(conn, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"10000\r\n" + b"C" * 65536 + b"\r\n"
    while not server.stopped.is_set():
        server.send(conn, chunk)


def hundred_kib(server: RawServer, conn: socket.socket) -> None:
    server.read_request(conn)
    body = b"k" * 100 * 1024
    server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)


def test_case_007_accepts_and_never_answers(fast, raw_server, session):
    # given: read timeout 0.5 s, deadline 5 s
    fast.POSTBACK_READ_TIMEOUT = 0.5
    server = raw_server(hang)

    # when
    outcome, elapsed = timed(lambda: send_attempt(prepared(server.url()), session=session))

    # then
    assert (outcome.error, outcome.status_code) == ("timeout", None)
    assert outcome.retryable
    assert elapsed < 0.5 + SLACK


def test_case_007_trickled_headers_end_at_the_deadline(fast, raw_server, session):
    # given: each byte comes well inside the read timeout, so only the deadline can stop it
    fast.POSTBACK_READ_TIMEOUT = 2.0
    fast.POSTBACK_ATTEMPT_DEADLINE = 1.0
    server = raw_server(trickle_headers)

    # when
    outcome, elapsed = timed(lambda: send_attempt(prepared(server.url()), session=session))

    # then
    assert (outcome.error, outcome.status_code) == ("timeout", None)
    assert "deadline" in outcome.error_detail
    assert outcome.retryable
    assert elapsed < 1.0 + SLACK


def test_case_007_trickled_body_ends_at_the_deadline_and_counts(fast, raw_server, session):
    # given
    fast.POSTBACK_READ_TIMEOUT = 2.0
    fast.POSTBACK_ATTEMPT_DEADLINE = 1.0
    server = raw_server(trickle_body)

    # when
    outcome, elapsed = timed(lambda: send_attempt(prepared(server.url()), session=session))

    # then: the 200 arrived, so the postback was delivered; the excerpt is what came
    assert outcome.delivered
    assert outcome.status_code == 200
    assert set(outcome.response_excerpt) <= {"z"}
    assert len(outcome.response_excerpt) < 1000
    assert elapsed < 1.0 + SLACK


@pytest.mark.parametrize("handler", [flood, endless_chunks], ids=["2GiB", "endless-chunked"])
def test_case_007_flood_is_cut_after_the_excerpt(fast, raw_server, session, handler):
    # given
    fast.POSTBACK_RESPONSE_EXCERPT = 1024
    server = raw_server(handler)

    # when
    outcome = send_attempt(prepared(server.url()), session=session)

    # then
    assert outcome.delivered
    assert outcome.status_code == 200
    assert len(outcome.response_excerpt) == 1024
    assert set(outcome.response_excerpt) <= {"F", "C"}
    deadline = time.monotonic() + 5
    while server.bytes_sent < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    # The client hung up: only what socket buffers hold was ever pushed, not 2 GiB.
    time.sleep(0.2)
    assert server.bytes_sent < 256 * 1024 * 1024


def test_case_007_hundred_kib_body(fast, raw_server, session):
    # given
    server = raw_server(hundred_kib)

    # when
    outcome = send_attempt(prepared(server.url()), session=session)

    # then
    assert outcome.delivered
    assert outcome.response_excerpt == "k" * 1024


# --- 008: Retry-After in its forms -------------------------------------------------------

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
CAP = 30.0
BASE = 1.0


@pytest.mark.parametrize(
    ("status", "header", "hint", "expected_min", "expected_max"),
    [
        (429, "2", 2.0, 2.0, 2.0),
        (503, format_datetime(NOW + timedelta(seconds=2), usegmt=True), 2.0, 2.0, 2.0),
        (429, "99999999", 99999999.0, CAP, CAP),
        # Garbage: normal backoff with equal jitter for attempt 1, i.e. [base/2, base].
        (429, "soon", None, BASE / 2, BASE),
    ],
)
def test_case_008_retry_after_forms(status, header, hint, expected_min, expected_max):
    # given
    rng = random.Random(8)

    # when
    parsed = parse_retry_after(header, now=NOW)
    delays = [backoff_delay(1, retry_after=parsed, base=BASE, cap=CAP, rng=rng) for _ in range(50)]

    # then
    assert is_retryable(status, "http_status")
    assert parsed == hint
    assert all(expected_min <= d <= expected_max for d in delays)
    assert min(delays) > 0  # no tight loop


def test_case_008_hint_is_capped_by_the_setting_value():
    # given: a receiver asks for more than the configured cap
    hint = parse_retry_after("45", now=NOW)

    # when
    delay = backoff_delay(2, retry_after=hint, base=BASE, cap=10.0, rng=random.Random(1))

    # then
    assert delay == 10.0


def test_case_008_last_status_is_what_the_receiver_said(fast, receiver, session):
    # given: the attempt the engine would record as the final one
    receiver.expect_request("/pb").respond_with_data(
        "busy", status=429, headers={"Retry-After": "soon"}
    )

    # when
    outcome = send_attempt(prepared(receiver.url_for("/pb")), session=session)

    # then
    assert (outcome.status_code, outcome.error, outcome.retry_after) == (429, "http_status", None)
