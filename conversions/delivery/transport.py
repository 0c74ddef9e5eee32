"""One HTTP attempt of one postback: build it, send it through the guard, classify it.

The HTTP client is aiohttp on one event loop (see the engine): a postback costs about a
fifth of the CPU it cost on `requests` worker threads. `send_attempt_async` never
raises: every way an attempt can end becomes an `AttemptOutcome` the engine can record
and act on. Limits that always apply, read from settings at call time:

- connect and read timeouts per socket operation (`POSTBACK_CONNECT_TIMEOUT`,
  `POSTBACK_READ_TIMEOUT`);
- a whole-attempt deadline (`POSTBACK_ATTEMPT_DEADLINE`) over every hop, the headers and
  the body: socket timeouts alone cannot stop a receiver that sends one byte per second,
  an `asyncio` timeout can;
- only an excerpt of the body is read (`POSTBACK_RESPONSE_EXCERPT` characters), then the
  connection is dropped, so a 2 GiB answer costs a few kilobytes; nothing is
  decompressed;
- redirects are followed by hand, at most `POSTBACK_MAX_REDIRECTS` hops, each one through
  the address guard like the first.

A 2xx status line means delivered, even if reading the excerpt then fails or runs out of
time: the receiver has accepted the postback by then.
"""

from __future__ import annotations

import asyncio
import codecs
import functools
import json
import logging
import re
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

import aiohttp
import yarl
from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

from conversions.delivery import guard
from conversions.delivery.macros import MACROS, expand_url, macro_values, template_names
from conversions.delivery.masking import (
    install_log_masking,
    mask_expanded_url,
    mask_text,
    mask_url,
    url_secrets,
)
from conversions.delivery.retry import is_retryable, parse_retry_after
from conversions.delivery.signing import sign

logger = logging.getLogger(__name__)
install_log_masking()  # HTTP clients quote request URLs in their DEBUG logs

ERROR_DETAIL_MAX = 300
_DEFAULT_PORTS = {"http": 80, "https": 443}
_CHARSET = re.compile(r"charset\s*=\s*[\"']?([A-Za-z0-9._:-]+)", re.IGNORECASE)


@dataclass(frozen=True)
class Limits:
    """The transport's settings, read once: every attempt of a run needs them."""

    deadline: float
    connect_timeout: float
    read_timeout: float
    max_redirects: int
    excerpt_chars: int
    user_agent: str


@functools.cache
def limits() -> Limits:
    return Limits(
        deadline=float(settings.POSTBACK_ATTEMPT_DEADLINE),
        connect_timeout=float(settings.POSTBACK_CONNECT_TIMEOUT),
        read_timeout=float(settings.POSTBACK_READ_TIMEOUT),
        max_redirects=int(settings.POSTBACK_MAX_REDIRECTS),
        excerpt_chars=max(0, int(settings.POSTBACK_RESPONSE_EXCERPT)),
        user_agent=settings.POSTBACK_USER_AGENT,
    )


@receiver(setting_changed)
def _settings_changed(*, setting: str, **kwargs: Any) -> None:
    if setting.startswith("POSTBACK_"):  # tests override them; a process never does
        limits.cache_clear()


@dataclass(frozen=True)
class PreparedPostback:
    method: str
    url: str  # the expanded URL; may hold secrets, never stored
    masked_url: str
    body: bytes | None
    event_id: str
    host_key: str  # "scheme://host:port", the per-host concurrency key
    secret: str = field(default="", repr=False)
    # The signing secret and the URL's secret values: masked out of whatever the
    # receiver answers. Found once here, not on every answer.
    secrets: tuple[str, ...] | None = field(default=None, repr=False)


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
    postback: Any, conversion: Any, *, conversion_type_name: str, event_id: uuid.UUID | str
) -> PreparedPostback:
    template = postback.url
    method = str(postback.method).upper()
    secret = postback.secret or ""
    values = macro_values(
        conversion,
        conversion_type_name=conversion_type_name,
        event_id=event_id,
        # A POST body carries every macro; a GET only the ones its URL uses.
        names=MACROS if method == "POST" else template_names(template),
    )
    url = expand_url(template, values)
    body = None
    if method == "POST":
        body = json.dumps(values, sort_keys=True, separators=(",", ":")).encode()
    masked_url, secrets = mask_expanded_url(url, template=template, secret=secret)
    return PreparedPostback(
        method=method,
        url=url,
        masked_url=masked_url,
        body=body,
        event_id=str(event_id),
        host_key=_template_host_key(template) or host_key(url),
        secret=secret if method == "POST" else "",
        secrets=secrets,
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


_AUTHORITY = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*")


@functools.lru_cache(maxsize=1024)
def _template_host_key(template: str) -> str | None:
    """The host key of every URL the template expands to, when its `scheme://authority`
    holds no macro or brace (then expanding cannot change it); else None."""
    match = _AUTHORITY.match(template)
    if match is None or any(c in match.group() for c in "{}%"):
        return None
    return host_key(match.group())


def new_async_session(
    *, pool_size: int, host_pools: int = 100, ssl_context: ssl.SSLContext | bool = True
) -> aiohttp.ClientSession:
    """A client session for postbacks; call it inside the event loop that will use it.

    At most `pool_size` connections per destination (the per-host cap), for up to
    `host_pools` destinations at once. `ssl_context` is for tests that pin a CA.
    """
    pool_size = max(1, pool_size)
    connector = guard.GuardedConnector(
        limit=pool_size * max(1, host_pools),
        limit_per_host=pool_size,
        # Every new connection asks the guard again: a cached answer would skip the check
        # on a name that has since been rebound.
        resolver=guard.GuardedResolver(),
        use_dns_cache=False,
        ssl=ssl_context,
    )
    return aiohttp.ClientSession(
        connector=connector,
        # No proxies or .netrc from the environment: the guard must see the real
        # destination and nothing may add credentials to a postback.
        trust_env=False,
        # Receivers' cookies must not travel to later postbacks (of other conversions, or
        # other affiliates on the same host).
        cookie_jar=aiohttp.DummyCookieJar(),
        # The excerpt is raw bytes: no zip bomb can grow it.
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=None),
    )


async def send_attempt_async(
    prepared: PreparedPostback,
    *,
    session: aiohttp.ClientSession,
    clock: Callable[[], float] = time.time,
) -> AttemptOutcome:
    """One try (with its redirects). `clock` gives the signature's Unix timestamp."""
    started = time.monotonic()
    deadline = asyncio.get_running_loop().time() + limits().deadline
    try:
        result = await _attempt(prepared, session=session, deadline=deadline, clock=clock)
    except Exception as exc:  # the transport never raises
        logger.exception("Postback attempt to %s failed unexpectedly", prepared.masked_url)
        result = _classify_exception(exc, expired=False)
    status, error, detail, excerpt, retry_after = result
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug(
            "Postback %s %s: %s %s", prepared.method, prepared.masked_url, status, error or "ok"
        )
    return AttemptOutcome(
        status_code=status,
        error=error,
        error_detail=_masked_detail(detail, prepared),
        duration_ms=max(0, int((time.monotonic() - started) * 1000)),
        # Receivers echo what they were sent: the URL's secrets must not come back in.
        response_excerpt=_masked_excerpt(excerpt, prepared),
        retry_after=retry_after,
    )


def _secrets(prepared: PreparedPostback) -> tuple[str, ...] | list[str]:
    if prepared.secrets is not None:
        return prepared.secrets
    return [prepared.secret, *url_secrets(prepared.url)]  # built by hand (tests)


def _masked_excerpt(excerpt: str, prepared: PreparedPostback) -> str:
    if not excerpt:
        return ""
    return mask_text(excerpt, secrets=_secrets(prepared))


def _masked_detail(detail: str, prepared: PreparedPostback) -> str:
    if not detail:  # the usual case
        return ""
    return _clean(mask_text(detail, secrets=_secrets(prepared)))[:ERROR_DETAIL_MAX]


# (status_code, error, error_detail, response_excerpt, retry_after)
_Result = tuple[int | None, str | None, str, str, float | None]
_REDIRECTS = frozenset((301, 302, 303, 307, 308))


class InvalidPostbackURL(ValueError):
    pass


async def _attempt(
    prepared: PreparedPostback,
    *,
    session: aiohttp.ClientSession,
    deadline: float,
    clock: Callable[[], float],
) -> _Result:
    loop = asyncio.get_running_loop()
    url, method, body = prepared.url, prepared.method, prepared.body
    config = limits()
    max_redirects = config.max_redirects
    for hop in range(max_redirects + 1):
        remaining = deadline - loop.time()
        if remaining <= 0:
            return None, "timeout", _deadline_detail(), "", None
        scope = asyncio.timeout_at(deadline)
        try:
            target, host_header = _target(url)
            headers = _headers(prepared, body, clock)
            if host_header:
                headers["Host"] = host_header
            timeout = aiohttp.ClientTimeout(
                total=None,
                sock_connect=min(config.connect_timeout, remaining),
                sock_read=min(config.read_timeout, remaining),
            )
            async with scope:
                response = await session.request(
                    method,
                    target,
                    data=body,
                    headers=headers,
                    allow_redirects=False,
                    timeout=timeout,
                )
        except Exception as exc:
            return _classify_exception(exc, expired=scope.expired(), hop=hop, url=url)

        location = response.headers.get("Location")
        if response.status not in _REDIRECTS or location is None:
            return await _read_answer(response, deadline)
        status = response.status
        response.close()
        if hop == max_redirects:
            return (
                status,
                "http_status",
                f"HTTP {status}: more than {max_redirects} redirects",
                "",
                None,
            )
        url = urljoin(url, location)
        if urlsplit(url).scheme.lower() not in ("http", "https"):
            return status, "invalid_url", f"redirect to a non-http URL: {mask_url(url)}", "", None
        # Browsers' rules (and requests'): 303, and 301/302 after a POST, continue as GET.
        if status == 303 or (status in (301, 302) and method == "POST"):
            method, body = "GET", None
    raise AssertionError("unreachable: the loop returns on its last hop")


# What `requests` left alone when it requoted a URL: reserved characters and `%`.
_SAFE = "!#$%&'()*+,/:;=?@[]~"
_NEEDS_QUOTING = re.compile(r"[^A-Za-z0-9._~!#$%&'()*+,/:;=?@\[\]-]")


def _requote(url: str) -> str:
    """Quote what must be quoted, and nothing already percent-encoded a second time.

    yarl's own quoting would turn a macro's `%2F` back into `/`; the contract wants each
    value encoded exactly once, so the URL is sent as expanded, spaces and non-ASCII
    quoted, a non-ASCII host in IDNA form.
    """
    if not _NEEDS_QUOTING.search(url):
        return url  # the usual case: nothing to quote (a fragment is never sent)
    parts = urlsplit(url)
    netloc = parts.netloc
    if not netloc.isascii():
        netloc = yarl.URL(f"{parts.scheme}://{netloc}/").raw_authority
    return urlunsplit(
        (
            parts.scheme,
            netloc,
            quote(parts.path, safe=_SAFE),
            quote(parts.query, safe=_SAFE),
            "",  # a fragment never leaves the client
        )
    )


def _target(url: str) -> tuple[yarl.URL, str]:
    """The URL to request and, for an IP literal, the Host header to keep its spelling.

    aiohttp never asks the resolver about a canonical IP literal (and refuses the other
    spellings), so literals are judged here, with the same verdict as resolved names.
    """
    parsed = yarl.URL(_requote(url), encoded=True)  # ValueError for a bad port or host
    if parsed.scheme not in ("http", "https"):
        raise InvalidPostbackURL(f"unsupported URL scheme {parsed.scheme!r}")
    host = parsed.raw_host
    if not host:
        raise InvalidPostbackURL("URL has no host")
    literal = guard.check_literal(host)
    if literal is None or _spelling(literal) == host:
        return parsed, ""
    # `0x7f.1` and friends: connect to the address they stand for, keep the Host header.
    netloc = parsed.raw_authority.rsplit("@", 1)[-1]
    return parsed.with_host(str(literal)), netloc


@functools.lru_cache(maxsize=1024)
def _spelling(address: guard.IPAddress) -> str:
    return str(address)


def _headers(
    prepared: PreparedPostback, body: bytes | None, clock: Callable[[], float]
) -> dict[str, str]:
    headers = {
        "User-Agent": limits().user_agent,
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


async def _read_answer(response: aiohttp.ClientResponse, deadline: float) -> _Result:
    status = response.status
    retry_header = response.headers.get("Retry-After")
    retry_after = (
        None if retry_header is None else parse_retry_after(retry_header, now=datetime.now(UTC))
    )
    limit_chars = limits().excerpt_chars
    # UTF-8 needs at most 4 bytes a character; reading more could never be shown.
    limit_bytes = limit_chars * 4
    chunks: list[bytes] = []
    size = 0
    finished = False
    note = ""
    scope = asyncio.timeout_at(deadline)
    try:
        async with scope:
            while size < limit_bytes:
                chunk = await response.content.read(min(65536, limit_bytes - size))
                if not chunk:
                    finished = True
                    break
                chunks.append(chunk)
                size += len(chunk)
    except Exception as exc:  # a cut or broken body still leaves the status standing
        note = (
            "attempt deadline reached while reading the body" if scope.expired() else _describe(exc)
        )
    if finished:
        response.release()  # the connection goes back to the pool
    else:
        response.close()  # drops the connection instead of draining the rest

    excerpt = _clean(_decode(b"".join(chunks), response.headers.get("Content-Type", "")))
    excerpt = excerpt[:limit_chars]
    if 200 <= status < 300:
        return status, None, note, excerpt, retry_after
    detail = f"HTTP {status}" + (f" {response.reason}" if response.reason else "")
    return status, "http_status", detail, excerpt, retry_after


def _decode(data: bytes, content_type: str) -> str:
    if not data:
        return ""
    return data.decode(_codec(content_type), errors="replace")


@functools.lru_cache(maxsize=256)  # receivers send the same few Content-Types
def _codec(content_type: str) -> str:
    # Only an explicit charset counts: HTTP/1.1's latin-1 default for text/* would turn
    # the UTF-8 most receivers send into mojibake.
    match = _CHARSET.search(content_type)
    try:
        return codecs.lookup(match.group(1) if match else "utf-8").name
    except LookupError:
        return "utf-8"


def _clean(text: str) -> str:
    # PostgreSQL text cannot hold NUL; an attempt row must always be writable.
    return text.replace("\x00", "\ufffd")


def _blocked_cause(exc: BaseException | None) -> guard.BlockedAddress | None:
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, guard.BlockedAddress):
            return exc
        exc = getattr(exc, "os_error", None) or exc.__cause__
        seen += 1
    return None


def _classify_exception(
    exc: BaseException, *, expired: bool, hop: int = 0, url: str = ""
) -> _Result:
    where = f"redirect hop {hop} to {mask_url(url)}: " if hop else ""
    blocked = _blocked_cause(exc)
    if blocked is not None:
        return None, "blocked_address", f"{where}blocked address {blocked.address}", "", None
    if expired:
        return None, "timeout", where + _deadline_detail(), "", None
    if isinstance(exc, TimeoutError):  # aiohttp's connect and read timeouts are ones
        return None, "timeout", where + _describe(exc), "", None
    if isinstance(exc, aiohttp.ClientConnectionError | ssl.SSLError):
        # Before the URL check: a certificate error is a ValueError too.
        return None, "connection_error", where + _describe(exc), "", None
    if isinstance(exc, aiohttp.InvalidURL | ValueError | UnicodeError):
        return None, "invalid_url", where + _describe(exc), "", None
    return None, "connection_error", where + _describe(exc), "", None


def _describe(exc: BaseException) -> str:
    text = str(exc)
    if not text and isinstance(exc, TimeoutError):
        text = "timed out"
    return f"{type(exc).__name__}: {text}"


def _deadline_detail() -> str:
    return f"attempt deadline of {limits().deadline:g}s exceeded"
