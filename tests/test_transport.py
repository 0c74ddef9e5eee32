"""One attempt over real loopback HTTP: statuses, timeouts, deadlines, excerpts, redirects.

`RawServer` plays the receivers an HTTP framework will not play (hang, trickle, flood);
pytest-httpserver plays the well-behaved ones.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import threading
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from pytest_httpserver import HTTPServer
from standardwebhooks import Webhook
from werkzeug import Response

from conversions.delivery import guard, transport
from conversions.delivery.engine import new_event_loop
from conversions.delivery.transport import (
    AttemptOutcome,
    PreparedPostback,
    new_async_session,
    prepare_postback,
    send_attempt_async,
)
from conversions.models import Conversion, Postback

EVENT_ID = uuid.UUID("3b0f6a7e-0c7d-4a55-9d43-5d3a3c3b8f10")
SLACK = 3.0  # seconds of leeway for a slow machine in "ended by the deadline" checks


# --- the async transport, driven from synchronous tests ------------------------------------


class LoopSession:
    """An aiohttp session on its own event loop thread, as the engine runs it."""

    def __init__(self, *, pool_size: int = 4, **kwargs) -> None:
        self.loop = new_event_loop()  # the engine's own kind of loop
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

        async def open_session():
            return new_async_session(pool_size=pool_size, **kwargs)

        self.client = self.run(open_session())

    def run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def close(self) -> None:
        self.run(self.client.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


def send_attempt(
    prepared: PreparedPostback, *, session: LoopSession, clock: Callable[[], float] = time.time
) -> AttemptOutcome:
    """`send_attempt_async` on the session's loop; safe to call from several threads."""
    return session.run(send_attempt_async(prepared, session=session.client, clock=clock))


def new_session(*, pool_size: int, **kwargs) -> LoopSession:
    return LoopSession(pool_size=pool_size, **kwargs)


# --- receivers ---------------------------------------------------------------------------


class RawServer:
    """A loopback TCP listener; `handler(server, conn)` decides how the receiver behaves."""

    def __init__(self, handler: Callable[[RawServer, socket.socket], None], host: str) -> None:
        self.handler = handler
        self.host = host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.create_server((host, 0), family=family)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.requests: list[bytes] = []
        self.bytes_sent = 0
        self.stopped = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def url(self, path: str = "/pb") -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{path}"

    def _accept_loop(self) -> None:
        self.sock.settimeout(0.05)
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            self.handler(self, conn)
        except OSError:
            pass  # the client went away, which is what several tests provoke
        finally:
            conn.close()

    def read_request(self, conn: socket.socket) -> bytes:
        conn.settimeout(5)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
        self.requests.append(data)
        return data

    def send(self, conn: socket.socket, data: bytes) -> None:
        conn.sendall(data)
        self.bytes_sent += len(data)

    def close(self) -> None:
        self.stopped.set()
        self.sock.close()
        self._thread.join(timeout=5)


@pytest.fixture
def raw_server() -> Iterator[Callable[..., RawServer]]:
    servers: list[RawServer] = []

    def start(handler: Callable[[RawServer, socket.socket], None], host: str = "127.0.0.1"):
        server = RawServer(handler, host)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture(scope="module")
def _receiver_server() -> Iterator[HTTPServer]:
    # Started once per module: stopping a server costs half a second.
    server = HTTPServer(host="127.0.0.1", port=0)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def receiver(_receiver_server: HTTPServer) -> Iterator[HTTPServer]:
    yield _receiver_server
    _receiver_server.clear()


@pytest.fixture
def session():
    s = new_session(pool_size=4)
    yield s
    s.close()


@pytest.fixture
def fast(allow_loopback):
    """Small limits so hostile receivers cost the suite little time."""
    allow_loopback.POSTBACK_CONNECT_TIMEOUT = 1.0
    allow_loopback.POSTBACK_READ_TIMEOUT = 1.0
    allow_loopback.POSTBACK_ATTEMPT_DEADLINE = 5.0
    return allow_loopback


def conversion(**kw) -> Conversion:
    """An unsaved conversion: macro expansion needs no database."""
    values = {
        "id": 981,
        "account_id": 1,
        "affiliate_id": 3,
        "brand_id": 5,
        "traffic_source_id": None,
        "conversion_type_id": 2,
        "click_id": uuid.UUID("9b2f0c1e-1111-4a4a-8b8b-000000000001"),
        "transaction_id": "tx-981",
        "status": "approved",
        "payout": Decimal("7.10"),
        "revenue": Decimal("12.00"),
        "currency": "EUR",
        "converted_at": datetime(2026, 1, 15, 12, 0, tzinfo=UTC),
        "sub1": "s1",
    }
    values.update(kw)
    return Conversion(**values)


def prepared(url: str, *, method: str = "GET", secret: str = "", **conv) -> PreparedPostback:
    postback = Postback(id=4, affiliate_id=3, url=url, method=method, secret=secret)
    return prepare_postback(
        postback, conversion(**conv), conversion_type_name="sale", event_id=EVENT_ID
    )


def timed(fn: Callable[[], AttemptOutcome]) -> tuple[AttemptOutcome, float]:
    started = time.monotonic()
    outcome = fn()
    return outcome, time.monotonic() - started


# --- well-behaved receivers --------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "delivered", "error", "retryable"),
    [
        (200, True, None, False),
        (201, True, None, False),
        (204, True, None, False),
        (400, False, "http_status", False),
        (404, False, "http_status", False),
        (410, False, "http_status", False),
        (408, False, "http_status", True),
        (429, False, "http_status", True),
        (500, False, "http_status", True),
        (502, False, "http_status", True),
        (503, False, "http_status", True),
    ],
)
def test_status_codes_are_classified(fast, receiver, session, status, delivered, error, retryable):
    # given
    receiver.expect_request("/pb").respond_with_data("answer", status=status)

    # when
    outcome = send_attempt(prepared(receiver.url_for("/pb")), session=session)

    # then
    assert outcome.status_code == status
    assert outcome.delivered is delivered
    assert outcome.error == error
    assert outcome.retryable is retryable
    assert outcome.response_excerpt == ("" if status == 204 else "answer")
    assert len(receiver.log) == 1


@pytest.mark.parametrize(
    ("header", "expected"), [("2", 2.0), ("soon", None), ("99999999", 99999999.0)]
)
def test_retry_after_is_reported(fast, receiver, session, header, expected):
    # given
    receiver.expect_request("/pb").respond_with_data(
        "slow down", status=429, headers={"Retry-After": header}
    )

    # when
    outcome = send_attempt(prepared(receiver.url_for("/pb")), session=session)

    # then
    assert outcome.status_code == 429
    assert outcome.retry_after == expected
    assert outcome.retryable


def test_get_sends_expanded_url_with_user_agent(fast, receiver, session):
    # given
    fast.POSTBACK_USER_AGENT = "pb-test/9"
    receiver.expect_request("/pb").respond_with_data("ok")
    url = receiver.url_for("/pb") + "?cid={click_id}&amt={payout}&t=%7Bconversion_type%7D"

    # when
    outcome = send_attempt(prepared(url), session=session)

    # then
    assert outcome.delivered
    request = receiver.log[0][0]
    assert request.method == "GET"
    assert request.query_string == b"cid=9b2f0c1e-1111-4a4a-8b8b-000000000001&amt=7.10&t=sale"
    assert request.headers["User-Agent"] == "pb-test/9"
    assert request.get_data() == b""


def test_post_sends_json_of_all_macros_signed(fast, receiver, session):
    # given
    secret = "whsec_" + "c2VjcmV0LWtleS1mb3ItdGVzdHM="
    receiver.expect_request("/pb", method="POST").respond_with_data("ok")
    now = time.time()

    # when
    outcome = send_attempt(
        prepared(receiver.url_for("/pb") + "?e={event_id}", method="POST", secret=secret),
        session=session,
        clock=lambda: now,
    )

    # then
    assert outcome.delivered
    request = receiver.log[0][0]
    body = request.get_data()
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["webhook-id"] == str(EVENT_ID)
    assert request.headers["webhook-timestamp"] == str(int(now))
    payload = Webhook(secret).verify(body, dict(request.headers))
    assert payload["event_id"] == str(EVENT_ID)
    assert payload["payout"] == "7.10"
    assert payload["conversion_type"] == "sale"
    assert set(payload) == {
        "click_id", "conversion_id", "transaction_id", "payout", "revenue", "currency",
        "status", "conversion_type", "affiliate_id", "account_id", "brand_id",
        "traffic_source_id", "converted_at", "timestamp", "event_id",
        "sub1", "sub2", "sub3", "sub4", "sub5",
    }  # fmt: skip


def test_post_without_secret_is_unsigned(fast, receiver, session):
    # given
    receiver.expect_request("/pb", method="POST").respond_with_data("ok")

    # when
    outcome = send_attempt(prepared(receiver.url_for("/pb"), method="POST"), session=session)

    # then
    assert outcome.delivered
    request = receiver.log[0][0]
    assert "webhook-signature" not in request.headers
    assert json.loads(request.get_data())["conversion_id"] == "981"


def test_each_attempt_signs_with_a_fresh_timestamp(fast, receiver, session):
    # given
    receiver.expect_request("/pb", method="POST").respond_with_data("ok")
    prep = prepared(receiver.url_for("/pb"), method="POST", secret="raw secret")
    clock = iter([1_800_000_000.0, 1_800_000_007.0])

    # when
    for _ in range(2):
        send_attempt(prep, session=session, clock=lambda: next(clock))

    # then
    stamps = [req.headers["webhook-timestamp"] for req, _ in receiver.log]
    assert stamps == ["1800000000", "1800000007"]
    assert all(req.headers["webhook-id"] == str(EVENT_ID) for req, _ in receiver.log)


@pytest.mark.parametrize(
    ("body", "limit", "expected"),
    [
        (b"0123456789abcdef", 10, "0123456789"),
        (b"ok", 10, "ok"),
        (b"\xff\xfebad\x00nul", 100, "\ufffd\ufffdbad\ufffdnul"),
        ("äöü€".encode(), 3, "äöü"),
    ],
)
def test_excerpt_is_capped_and_storable(fast, receiver, session, body, limit, expected):
    # given
    fast.POSTBACK_RESPONSE_EXCERPT = limit
    receiver.expect_request("/pb").respond_with_data(body, content_type="text/plain")

    # when
    outcome = send_attempt(prepared(receiver.url_for("/pb")), session=session)

    # then
    assert outcome.delivered
    assert outcome.response_excerpt == expected


def test_excerpt_of_an_error_answer_is_kept(fast, receiver, session):
    # given
    receiver.expect_request("/pb").respond_with_data("unknown click id", status=422)

    # when
    outcome = send_attempt(prepared(receiver.url_for("/pb")), session=session)

    # then
    assert (outcome.error, outcome.retryable) == ("http_status", False)
    assert outcome.response_excerpt == "unknown click id"
    assert outcome.error_detail.startswith("HTTP 422")


def test_keep_alive_connection_is_reused(fast, raw_server, session):
    # given: an HTTP/1.1 receiver that keeps its connection open
    def handler(server: RawServer, conn: socket.socket) -> None:
        while server.read_request(conn):
            server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    server = raw_server(handler)

    # when
    outcomes = [send_attempt(prepared(server.url()), session=session) for _ in range(3)]

    # then
    assert all(o.delivered for o in outcomes)
    assert server.connections == 1
    assert len([r for r in server.requests if r]) == 3


def test_receiver_cookies_are_not_sent_back(fast, receiver, session):
    # given: a receiver that sets a cookie
    receiver.expect_request("/pb").respond_with_response(
        Response("ok", headers={"Set-Cookie": "sid=affiliate-a; Path=/"})
    )

    # when
    outcomes = [send_attempt(prepared(receiver.url_for("/pb")), session=session) for _ in "ab"]

    # then
    assert all(o.delivered for o in outcomes)
    assert [req.headers.get("Cookie") for req, _ in receiver.log] == [None, None]
    assert len(session.client.cookie_jar) == 0


def test_new_session_sizes_its_pools(settings):
    # when
    s = new_session(pool_size=8, host_pools=50)

    # then
    try:
        connector = s.client.connector
        assert connector.limit_per_host == 8
        assert connector.limit == 400
        assert connector.use_dns_cache is False
        assert isinstance(connector, guard.GuardedConnector)
        assert s.client.trust_env is False
        assert s.client.auto_decompress is False
    finally:
        s.close()


# --- redirects ---------------------------------------------------------------------------


def redirect_chain(receiver: HTTPServer, hops: int, *, status: int = 302) -> None:
    for n in range(hops):
        target = "/final" if n == hops - 1 else f"/r{n + 1}"
        receiver.expect_request(f"/r{n}").respond_with_response(
            Response(status=status, headers={"Location": target})
        )
    receiver.expect_request("/final").respond_with_data("landed")


@pytest.mark.parametrize("hops", [1, 2, 3])
def test_up_to_three_redirects_are_followed(fast, receiver, session, hops):
    # given
    redirect_chain(receiver, hops)

    # when
    outcome = send_attempt(prepared(receiver.url_for("/r0")), session=session)

    # then
    assert outcome.delivered
    assert outcome.response_excerpt == "landed"
    assert [req.path for req, _ in receiver.log][-1] == "/final"


def test_a_fourth_redirect_is_refused(fast, receiver, session):
    # given
    redirect_chain(receiver, 4)

    # when
    outcome = send_attempt(prepared(receiver.url_for("/r0")), session=session)

    # then
    assert not outcome.delivered
    assert (outcome.status_code, outcome.error) == (302, "http_status")
    assert not outcome.retryable
    assert "redirects" in outcome.error_detail
    assert "/final" not in [req.path for req, _ in receiver.log]


def test_redirect_setting_is_read_at_call_time(fast, receiver, session):
    # given
    fast.POSTBACK_MAX_REDIRECTS = 1
    redirect_chain(receiver, 2)

    # when
    outcome = send_attempt(prepared(receiver.url_for("/r0")), session=session)

    # then
    assert outcome.error == "http_status"


def test_redirect_to_a_blocked_address_is_blocked(fast, receiver, raw_server, session):
    # given: 127.0.0.2 listens but is not in the allow-list (127.0.0.1/32)
    other = raw_server(lambda s, c: s.send(c, b"HTTP/1.1 200 OK\r\n\r\n"), host="127.0.0.2")
    receiver.expect_request("/pb").respond_with_response(
        Response(status=302, headers={"Location": other.url("/stolen?token=abc123")})
    )

    # when
    outcome = send_attempt(prepared(receiver.url_for("/pb")), session=session)

    # then
    assert outcome.error == "blocked_address"
    assert not outcome.retryable
    assert "127.0.0.2" in outcome.error_detail
    assert "abc123" not in outcome.error_detail
    assert other.connections == 0
    socket.create_connection(("127.0.0.2", other.port), timeout=2).close()  # it does listen
    deadline = time.monotonic() + 5
    while other.connections == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert other.connections == 1


@pytest.mark.parametrize(
    ("status", "method", "has_body"),
    [(303, "GET", False), (302, "GET", False), (307, "POST", True), (308, "POST", True)],
)
def test_redirect_method_rules(fast, receiver, session, status, method, has_body):
    # given
    receiver.expect_request("/pb").respond_with_response(
        Response(status=status, headers={"Location": "/next"})
    )
    receiver.expect_request("/next").respond_with_data("ok")

    # when
    outcome = send_attempt(prepared(receiver.url_for("/pb"), method="POST"), session=session)

    # then
    assert outcome.delivered
    final = receiver.log[-1][0]
    assert final.method == method
    assert bool(final.get_data()) is has_body


def test_redirect_to_other_scheme_is_invalid(fast, receiver, session):
    # given
    receiver.expect_request("/pb").respond_with_response(
        Response(status=302, headers={"Location": "file:///etc/passwd"})
    )

    # when
    outcome = send_attempt(prepared(receiver.url_for("/pb")), session=session)

    # then
    assert outcome.error == "invalid_url"
    assert not outcome.retryable


# --- failures before an answer -----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_connection_refused_is_retryable_and_masked(fast, session):
    # given
    url = f"http://127.0.0.1:{free_port()}/pb?token=abc123&cid={{click_id}}"

    # when
    outcome = send_attempt(prepared(url, secret="s3cr3t-value"), session=session)

    # then
    assert (outcome.status_code, outcome.error) == (None, "connection_error")
    assert outcome.retryable
    assert "abc123" not in outcome.error_detail
    assert "token=***" in prepared(url).masked_url
    assert len(outcome.error_detail) <= 300


def test_a_receiver_that_never_answers_hits_the_read_timeout(fast, raw_server, session):
    # given
    server = raw_server(lambda s, c: (s.read_request(c), s.stopped.wait()))
    fast.POSTBACK_READ_TIMEOUT = 0.5

    # when
    outcome, elapsed = timed(lambda: send_attempt(prepared(server.url()), session=session))

    # then
    assert (outcome.status_code, outcome.error) == (None, "timeout")
    assert outcome.retryable
    assert elapsed < 0.5 + SLACK
    assert server.connections == 1


def test_blocked_without_allow_list_makes_no_connection(settings, raw_server, session):
    # given
    settings.POSTBACK_ALLOWED_NETWORKS = []
    server = raw_server(lambda s, c: s.send(c, b"HTTP/1.1 200 OK\r\n\r\n"))

    # when
    outcome = send_attempt(prepared(server.url()), session=session)

    # then
    assert (outcome.status_code, outcome.error) == (None, "blocked_address")
    assert not outcome.retryable
    assert server.connections == 0


@pytest.mark.parametrize(
    "url", ["http:///nohost", "ftp://example.com/pb", "http://exa mple.com:99999/pb", "nonsense"]
)
def test_invalid_urls_are_final(fast, session, url):
    # when
    outcome = send_attempt(prepared(url), session=session)

    # then
    assert outcome.error == "invalid_url"
    assert not outcome.retryable
    assert outcome.status_code is None


def test_unexpected_errors_become_outcomes(fast, session, monkeypatch):
    # given: something deep inside blows up in a way no one planned for
    def explode(*args, **kwargs):
        raise RuntimeError("boom token=abc123")

    monkeypatch.setattr(transport, "_headers", explode)

    # when
    outcome = send_attempt(prepared("http://127.0.0.1:9/pb"), session=session)

    # then
    assert outcome.error == "connection_error"
    assert "abc123" not in outcome.error_detail
    assert "RuntimeError" in outcome.error_detail


def test_prepared_postback_never_shows_its_secret(fast):
    # when
    prep = prepared("http://127.0.0.1/pb?k={sub1}", method="POST", secret="topsecret")

    # then
    assert "topsecret" not in repr(prep)
    assert prep.secret == "topsecret"
    assert prep.host_key == "http://127.0.0.1:80"


@pytest.mark.parametrize(
    ("url", "key"),
    [
        ("HTTPS://Tracker.Example/pb", "https://tracker.example:443"),
        ("http://tracker.example:8080/x", "http://tracker.example:8080"),
        ("http://[::1]:81/x", "http://[::1]:81"),
        ("http://[::1/x", "invalid://"),
    ],
)
def test_host_key(url, key):
    assert prepared(url).host_key == key


def test_memory_stays_flat_on_a_flood(fast, raw_server, session):
    # given: a 2 GiB answer
    def flood(server: RawServer, conn: socket.socket) -> None:
        server.read_request(conn)
        server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 2147483648\r\n\r\n")
        block = b"x" * 65536
        while not server.stopped.is_set():
            server.send(conn, block)

    server = raw_server(flood)
    tracemalloc.start()

    # when
    try:
        outcome = send_attempt(prepared(server.url()), session=session)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    # then
    assert outcome.delivered
    assert len(outcome.response_excerpt) == 1024
    assert peak < 4 * 1024 * 1024


def test_a_deadline_cuts_only_its_own_attempt_in_a_shared_session(fast, raw_server):
    # given: one session shared by worker threads, as the engine uses it; half the
    # attempts go to a receiver that trickles its headers past the 2 s deadline, the
    # other half start 1 s later and are still waiting for their answer when the cut comes
    fast.POSTBACK_ATTEMPT_DEADLINE = 2.0
    fast.POSTBACK_READ_TIMEOUT = 3.0
    answered_after_cut = threading.Event()

    def trickle(server: RawServer, conn: socket.socket) -> None:
        # A well-formed start, then one header byte at a time for ever (a client may
        # refuse a malformed status line at once; this one it has to wait out).
        server.read_request(conn)
        for byte in itertools.chain(b"HTTP/1.1 200 OK\r\nX-Slow: ", itertools.repeat(97)):
            if server.stopped.wait(0.3):
                return
            server.send(conn, bytes([byte]))

    def slow_ok(server: RawServer, conn: socket.socket) -> None:
        server.read_request(conn)
        server.stopped.wait(1.5)
        server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")

    bad, good = raw_server(trickle), raw_server(slow_ok)
    shared = new_session(pool_size=8)

    def cut_one() -> AttemptOutcome:
        return send_attempt(prepared(bad.url()), session=shared)

    def late_good_one() -> AttemptOutcome:
        time.sleep(1.0)
        outcome = send_attempt(prepared(good.url()), session=shared)
        answered_after_cut.set()
        return outcome

    # when
    with ThreadPoolExecutor(8) as pool:
        cut = [pool.submit(cut_one) for _ in range(4)]
        kept = [pool.submit(late_good_one) for _ in range(4)]
        cut_outcomes = [f.result() for f in cut]
        cut_finished_first = not answered_after_cut.is_set()
        kept_outcomes = [f.result() for f in kept]
    shared.close()

    # then
    assert [o.error for o in cut_outcomes] == ["timeout"] * 4
    assert [o.delivered for o in kept_outcomes] == [True] * 4
    assert cut_finished_first


@pytest.mark.parametrize(
    "template",
    [
        "http://T.Example:8080/pb?c={click_id}",
        "https://t.example/pb?c={click_id}&p={payout}&e={event_id}",
        "https://{sub1}.t.example/pb",
        "http://[::1]:99/x{sub1}",
        "https://t.example:99999/pb?c={sub1}",
        "http://u:pw@t.example/pb?token={sub1}",
        "https://t%7B.example/pb?{sub1}=1",
    ],
)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_prepared_postback_matches_the_full_expansion(template, method):
    """The per-template shortcuts (macros asked for, host key, masking) change nothing."""
    from conversions.delivery.macros import expand_url, macro_values
    from conversions.delivery.masking import mask_url

    row = Conversion(
        id=5, account_id=1, affiliate_id=2, conversion_type_id=1, click_id=uuid.uuid4(),
        transaction_id="tx", status="approved", payout=Decimal("1.5"), revenue=Decimal("2"),
        currency="EUR", converted_at=datetime(2026, 1, 1, tzinfo=UTC), sub1="a-b",
    )  # fmt: skip
    postback = Postback(url=template, method=method, secret="whsec_c2VjcmV0")
    prepared = prepare_postback(postback, row, conversion_type_name="sale", event_id=EVENT_ID)
    values = macro_values(row, conversion_type_name="sale", event_id=EVENT_ID)
    url = expand_url(template, values)
    assert prepared.url == url
    assert prepared.host_key == transport.host_key(url)
    assert prepared.masked_url == mask_url(url, secrets=[postback.secret])
    if method == "POST":
        assert json.loads(prepared.body) == values
