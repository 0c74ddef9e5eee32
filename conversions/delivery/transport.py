"""One HTTP attempt of one postback: build it, send it through the guard, classify it.

`send_attempt` never raises: every way an attempt can end becomes an `AttemptOutcome`
the engine can record and act on. Limits that always apply, read from settings at call
time:

- connect and read timeouts per socket operation (`POSTBACK_CONNECT_TIMEOUT`,
  `POSTBACK_READ_TIMEOUT`);
- a whole-attempt deadline (`POSTBACK_ATTEMPT_DEADLINE`) over every hop, the headers and
  the body. Socket timeouts alone cannot stop a receiver that sends one byte per second,
  so a shared watchdog thread shuts the attempt's sockets down when the deadline passes;
- only an excerpt of the body is read (`POSTBACK_RESPONSE_EXCERPT` characters), then the
  connection is dropped, so a 2 GiB answer costs a few kilobytes;
- redirects are followed by hand, at most `POSTBACK_MAX_REDIRECTS` hops, each one through
  the address guard like the first.

A 2xx status line means delivered, even if reading the excerpt then fails or runs out of
time: the receiver has accepted the postback by then.
"""

from __future__ import annotations

import codecs
import contextlib
import heapq
import itertools
import json
import logging
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.cookiejar import DefaultCookiePolicy
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
from django.conf import settings
from requests.utils import requote_uri

from conversions.delivery import guard
from conversions.delivery.macros import expand_url, macro_values
from conversions.delivery.masking import install_log_masking, mask_text, mask_url, url_secrets
from conversions.delivery.retry import is_retryable, parse_retry_after
from conversions.delivery.signing import sign

logger = logging.getLogger(__name__)
install_log_masking()  # urllib3 quotes request URLs in its DEBUG logs

ERROR_DETAIL_MAX = 300
_DEFAULT_PORTS = {"http": 80, "https": 443}
_CHARSET = re.compile(r"charset\s*=\s*[\"']?([A-Za-z0-9._:-]+)", re.IGNORECASE)


@dataclass(frozen=True)
class PreparedPostback:
    method: str
    url: str  # the expanded URL; may hold secrets, never stored
    masked_url: str
    body: bytes | None
    event_id: str
    host_key: str  # "scheme://host:port", the per-host concurrency key
    secret: str = field(default="", repr=False)


@dataclass(frozen=True)
class AttemptOutcome:
    status_code: int | None
    error: (
        str | None
    )  # None | timeout | connection_error | http_status | blocked_address | invalid_url
    error_detail: str
    duration_ms: int
    response_excerpt: str
    retry_after: float | None

    @property
    def delivered(self) -> bool:
        return self.error is None and self.status_code is not None and 200 <= self.status_code < 300

    @property
    def retryable(self) -> bool:
        return is_retryable(self.status_code, self.error)


def prepare_postback(
    postback: Any, conversion: Any, *, conversion_type_name: str, event_id: uuid.UUID
) -> PreparedPostback:
    values = macro_values(conversion, conversion_type_name=conversion_type_name, event_id=event_id)
    url = expand_url(postback.url, values)
    method = str(postback.method).upper()
    secret = postback.secret or ""
    body = None
    if method == "POST":
        body = json.dumps(values, sort_keys=True, separators=(",", ":")).encode()
    return PreparedPostback(
        method=method,
        url=url,
        masked_url=mask_url(url, secrets=[secret]),
        body=body,
        event_id=str(event_id),
        host_key=host_key(url),
        secret=secret if method == "POST" else "",
    )


def host_key(url: str) -> str:
    """`scheme://host:port`, lowercased; a URL that cannot be parsed gets one shared key."""
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        host = (parts.hostname or "").lower()
        port = parts.port or _DEFAULT_PORTS.get(scheme, 0)
    except ValueError:
        return "invalid://"
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


def new_session(*, pool_size: int, host_pools: int = 100) -> requests.Session:
    """A session for postbacks; safe to share between the engine's worker threads.

    `pool_size` keep-alive connections are kept per destination (the per-host cap), for
    up to `host_pools` destinations at once.
    """
    session = requests.Session()
    # No proxies, .netrc or CA bundle from the environment: the guard must see the real
    # destination and nothing may add credentials to a postback.
    session.trust_env = False
    # Receivers' cookies must not travel to later postbacks (of other conversions, or
    # other affiliates on the same host); refusing them also keeps the shared jar still.
    session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
    adapter = guard.GuardedAdapter(
        pool_connections=max(1, host_pools), pool_maxsize=max(1, pool_size)
    )
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = settings.POSTBACK_USER_AGENT
    return session


def send_attempt(
    prepared: PreparedPostback,
    *,
    session: requests.Session,
    clock: Callable[[], float] = time.time,
) -> AttemptOutcome:
    """One try (with its redirects). `clock` gives the signature's Unix timestamp."""
    started = time.monotonic()
    secrets = [prepared.secret, *url_secrets(prepared.url)]
    deadline = _AttemptDeadline(started + float(settings.POSTBACK_ATTEMPT_DEADLINE))
    try:
        with deadline.armed(), guard.observe_sockets(deadline.register):
            result = _attempt(prepared, session=session, deadline=deadline, clock=clock)
    except Exception as exc:  # the transport never raises
        logger.exception("Postback attempt to %s failed unexpectedly", prepared.masked_url)
        result = _classify_exception(exc, deadline)
    status, error, detail, excerpt, retry_after = result
    return AttemptOutcome(
        status_code=status,
        error=error,
        error_detail=_clean(mask_text(detail, secrets=secrets))[:ERROR_DETAIL_MAX],
        duration_ms=max(0, int((time.monotonic() - started) * 1000)),
        # Receivers echo what they were sent: the URL's secrets must not come back in.
        response_excerpt=mask_text(excerpt, secrets=secrets) if excerpt else excerpt,
        retry_after=retry_after,
    )


# (status_code, error, error_detail, response_excerpt, retry_after)
_Result = tuple[int | None, str | None, str, str, float | None]


def _attempt(
    prepared: PreparedPostback,
    *,
    session: requests.Session,
    deadline: _AttemptDeadline,
    clock: Callable[[], float],
) -> _Result:
    url, method, body = prepared.url, prepared.method, prepared.body
    max_redirects = int(settings.POSTBACK_MAX_REDIRECTS)
    for hop in range(max_redirects + 1):
        remaining = deadline.remaining()
        if remaining <= 0:
            return None, "timeout", _deadline_detail(), "", None
        try:
            request = session.prepare_request(
                requests.Request(method, url, data=body, headers=_headers(prepared, body, clock))
            )
            # `verify` is left to the session (True unless a caller pins a CA bundle).
            response = session.send(
                request,
                stream=True,
                allow_redirects=False,
                timeout=(
                    min(float(settings.POSTBACK_CONNECT_TIMEOUT), remaining),
                    min(float(settings.POSTBACK_READ_TIMEOUT), remaining),
                ),
            )
        except Exception as exc:
            return _classify_exception(exc, deadline, hop=hop, url=url)

        if not response.is_redirect:
            return _read_answer(response, deadline)
        status = response.status_code
        target = session.get_redirect_target(response) or ""
        response.close()
        if hop == max_redirects:
            return (
                status,
                "http_status",
                f"HTTP {status}: more than {max_redirects} redirects",
                "",
                None,
            )
        url = requote_uri(urljoin(url, target))
        if urlsplit(url).scheme.lower() not in ("http", "https"):
            return status, "invalid_url", f"redirect to a non-http URL: {mask_url(url)}", "", None
        # Browsers' rules (and requests'): 303, and 301/302 after a POST, continue as GET.
        if status == 303 or (status in (301, 302) and method == "POST"):
            method, body = "GET", None
    raise AssertionError("unreachable: the loop returns on its last hop")


def _headers(
    prepared: PreparedPostback, body: bytes | None, clock: Callable[[], float]
) -> dict[str, str]:
    headers = {
        "User-Agent": settings.POSTBACK_USER_AGENT,
        "Accept": "*/*",
        # The excerpt is read as raw bytes (never decompressed, so no zip bomb can grow it).
        "Accept-Encoding": "identity",
    }
    if body is not None:
        headers["Content-Type"] = "application/json"
        if prepared.secret:
            # A fresh timestamp per attempt: receivers refuse stale ones.
            headers.update(
                sign(
                    secret=prepared.secret,
                    msg_id=prepared.event_id,
                    timestamp=int(clock()),
                    body=body,
                )
            )
    return headers


def _read_answer(response: requests.Response, deadline: _AttemptDeadline) -> _Result:
    status = response.status_code
    retry_after = parse_retry_after(response.headers.get("Retry-After"), now=datetime.now(UTC))
    limit_chars = max(0, int(settings.POSTBACK_RESPONSE_EXCERPT))
    # UTF-8 needs at most 4 bytes a character; reading more could never be shown.
    limit_bytes = limit_chars * 4
    chunks: list[bytes] = []
    size = 0
    finished = False
    note = ""
    raw = response.raw
    try:
        while size < limit_bytes:
            if deadline.remaining() <= 0:
                note = "attempt deadline reached while reading the body"
                break
            chunk = raw.read1(min(65536, limit_bytes - size), decode_content=False)
            if not chunk:
                finished = True
                break
            chunks.append(chunk)
            size += len(chunk)
    except Exception as exc:  # a cut or broken body still leaves the status standing
        note = (
            "attempt deadline reached while reading the body"
            if deadline.expired
            else _describe(exc)
        )
    deadline.finish()  # from here on the socket may go back to the pool
    if finished:
        raw.release_conn()
    else:
        response.close()  # drops the connection instead of draining the rest

    excerpt = _clean(_decode(b"".join(chunks), response.headers.get("Content-Type", "")))
    excerpt = excerpt[:limit_chars]
    if 200 <= status < 300:
        return status, None, note, excerpt, retry_after
    detail = f"HTTP {status}" + (f" {response.reason}" if response.reason else "")
    return status, "http_status", detail, excerpt, retry_after


def _decode(data: bytes, content_type: str) -> str:
    # Only an explicit charset counts: HTTP/1.1's latin-1 default for text/* would turn
    # the UTF-8 most receivers send into mojibake.
    match = _CHARSET.search(content_type)
    try:
        codec = codecs.lookup(match.group(1) if match else "utf-8").name
    except LookupError:
        codec = "utf-8"
    return data.decode(codec, errors="replace")


def _clean(text: str) -> str:
    # PostgreSQL text cannot hold NUL; an attempt row must always be writable.
    return text.replace("\x00", "\ufffd")


def _classify_exception(
    exc: BaseException, deadline: _AttemptDeadline, *, hop: int = 0, url: str = ""
) -> _Result:
    where = f"redirect hop {hop} to {mask_url(url)}: " if hop else ""
    if isinstance(exc, guard.BlockedAddress):
        return None, "blocked_address", f"{where}blocked address {exc.address}", "", None
    if deadline.expired:
        return None, "timeout", where + _deadline_detail(), "", None
    if isinstance(exc, requests.exceptions.Timeout):
        return None, "timeout", where + _describe(exc), "", None
    if isinstance(
        exc,
        requests.exceptions.InvalidURL
        | requests.exceptions.MissingSchema
        | requests.exceptions.InvalidSchema
        | requests.exceptions.URLRequired
        | UnicodeError,
    ):
        return None, "invalid_url", where + _describe(exc), "", None
    return None, "connection_error", where + _describe(exc), "", None


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _deadline_detail() -> str:
    return f"attempt deadline of {settings.POSTBACK_ATTEMPT_DEADLINE}s exceeded"


# --- the whole-attempt deadline ----------------------------------------------------------


class _AttemptDeadline:
    """The sockets of one attempt, cut when its deadline passes (unless it is done)."""

    def __init__(self, at: float) -> None:
        self.at = at
        self.expired = False
        self.done = False
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []

    def remaining(self) -> float:
        return self.at - time.monotonic()

    @contextmanager
    def armed(self) -> Iterator[None]:
        _watchdog.watch(self)
        try:
            yield
        finally:
            self.finish()

    def register(self, sock: socket.socket) -> None:
        with self._lock:
            if self.done:
                return
            if self.expired:
                _cut(sock)
            elif not any(s is sock for s in self._sockets):
                self._sockets.append(sock)

    def expire(self) -> None:
        with self._lock:
            if self.done:
                return
            self.expired = True
            for sock in self._sockets:
                _cut(sock)

    def finish(self) -> None:
        # Under the lock, so a late expire() can never cut a socket that is back in the
        # pool and serving the next attempt.
        with self._lock:
            self.done = True
            self._sockets.clear()


def _cut(sock: socket.socket) -> None:
    # The plain socket's shutdown, also for TLS sockets: it wakes a blocked read in the
    # other thread without touching the SSL object that read is using.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _Watchdog:
    """One daemon thread for every attempt deadline in the process (not one per attempt)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, _AttemptDeadline]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, deadline: _AttemptDeadline) -> None:
        with self._cond:
            heapq.heappush(self._heap, (deadline.at, next(self._seq), deadline))
            if self._thread is None or not self._thread.is_alive():  # also after a fork
                self._thread = threading.Thread(
                    target=self._run, name="postback-deadline-watchdog", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    while self._heap and self._heap[0][2].done:
                        heapq.heappop(self._heap)
                    now = time.monotonic()
                    if self._heap and self._heap[0][0] <= now:
                        due = heapq.heappop(self._heap)[2]
                        break
                    self._cond.wait(self._heap[0][0] - now if self._heap else None)
            due.expire()


_watchdog = _Watchdog()
