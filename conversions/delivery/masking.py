"""Secrets out of URLs and messages before they are stored or logged.

Attempt rows and logs are read by more people than the postback's owner, so the password
in userinfo, the values of parameters that look like credentials and the postback's own
signing secret are replaced with `***`. The rest of the URL is kept byte for byte, so an
operator still sees what was sent.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus, unquote_plus, urlsplit, urlunsplit

from conversions.delivery.macros import MACRO_PATTERN

MASK = "***"

SECRET_PARAM_NAMES: frozenset[str] = frozenset(
    {
        "token",
        "key",
        "secret",
        "password",
        "passwd",
        "pwd",
        "pass",
        "sig",
        "signature",
        "auth",
        "apikey",
        "api_key",
        "access_token",
        "hash",
    }
)
# Suffixes that make a longer name secret too: `client_secret`, `xAuthToken`, `x-api-key`.
_SECRET_SUFFIXES = ("token", "secret", "password", "apikey", "signature")

# `name=value` inside free text (error messages quote URLs).
_PARAM_IN_TEXT = re.compile(
    r"(?P<name>[A-Za-z0-9_.\-\[\]]+)=(?P<quote>['\"]?)(?P<value>[^&\s'\"#;,)]*)"
)
_USERINFO_IN_TEXT = re.compile(r"(//[^/\s:@]*):([^/\s@]*)@")


@functools.lru_cache(maxsize=4096)  # pure; the same few names come back on every URL
def is_secret_param(name: str) -> bool:
    normalized = unquote_plus(name).strip().lower()
    if normalized in SECRET_PARAM_NAMES:
        return True
    parts = [p for p in re.split(r"[^a-z0-9]+", normalized) if p]
    if any(p in SECRET_PARAM_NAMES for p in parts):
        return True
    compact = "".join(parts)
    return compact in SECRET_PARAM_NAMES or compact.endswith(_SECRET_SUFFIXES)


def mask_url(url: str, *, secrets: Iterable[str] = ()) -> str:
    """The URL with credentials replaced by `***`; never raises."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hostport = netloc.rpartition("@")
            if ":" in userinfo:
                user = userinfo.split(":", 1)[0]
                netloc = f"{user}:{MASK}@{hostport}"
        masked = urlunsplit(
            (
                parts.scheme,
                netloc,
                parts.path,
                _mask_params(parts.query),
                _mask_params(parts.fragment),
            )
        )
    except ValueError:
        masked = mask_text(url)
    return _mask_literals(masked, secrets)


def mask_text(text: str, *, secrets: Iterable[str] = ()) -> str:
    """Free text (an error message) with URL-ish credentials and given secrets masked."""

    def param(match: re.Match[str]) -> str:
        if is_secret_param(match.group("name")) and match.group("value"):
            return f"{match.group('name')}={match.group('quote')}{MASK}"
        return match.group(0)

    if "@" in text:
        text = _USERINFO_IN_TEXT.sub(lambda m: f"{m.group(1)}:{MASK}@", text)
    if "=" in text:
        text = _PARAM_IN_TEXT.sub(param, text)
    return _mask_literals(text, secrets)


def url_secrets(url: str) -> list[str]:
    """The secret values inside a URL, so messages quoting it can be masked too."""
    found: list[str] = []
    try:
        parts = urlsplit(url)
        if parts.password:
            found.append(parts.password)
    except ValueError:
        return found
    for piece in (parts.query + "&" + parts.fragment).split("&"):
        name, sep, value = piece.partition("=")
        if sep and value and is_secret_param(name):
            found.append(value)
            found.append(unquote_plus(value))
    return found


def mask_expanded_url(url: str, *, template: str, secret: str = "") -> tuple[str, tuple[str, ...]]:
    """`mask_url(url, secrets=[secret])` and the secrets to mask out of answers, for a
    URL expanded from `template`.

    Macro values are encoded whole, so they cannot add a parameter, a password or a
    fragment: when the template has nothing to mask and no macro where a parameter's
    name or the authority is, neither has the expanded URL, and the parse is skipped.
    """
    if _template_needs_parse(template):
        masked = mask_url(url, secrets=[secret])
        found = url_secrets(url)
    else:
        masked = _mask_literals(url, [secret]) if secret else url
        found = []
    return masked, tuple(filter(None, (secret, *found)))


@functools.lru_cache(maxsize=1024)
def _template_needs_parse(template: str) -> bool:
    try:
        parts = urlsplit(template)
    except ValueError:
        return True
    if "@" in parts.netloc or MACRO_PATTERN.search(parts.scheme + parts.netloc):
        return True
    for piece in (parts.query + "&" + parts.fragment).split("&"):
        name, sep, value = piece.partition("=")
        if sep and (MACRO_PATTERN.search(name) or (value and is_secret_param(name))):
            return True
    return False


def _mask_params(query: str) -> str:
    if not query:
        return query
    pieces = []
    for piece in query.split("&"):
        name, sep, value = piece.partition("=")
        if sep and value and is_secret_param(name):
            piece = f"{name}={MASK}"
        pieces.append(piece)
    return "&".join(pieces)


def _mask_literals(text: str, secrets: Iterable[str]) -> str:
    # Longest first, so a secret that contains another is masked whole.
    forms: set[str] = set()
    for secret in secrets:
        if secret:
            forms.update({secret, quote(secret, safe=""), quote_plus(secret)})
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, MASK)
    return text


class MaskSecretsFilter(logging.Filter):
    """Masks URL credentials in the records of a library logger we do not control.

    HTTP clients log request lines and URLs (urllib3 every request at DEBUG; aiohttp and
    asyncio when a response or session is left unclosed or a task fails, with the URL in
    the object's repr); with `LOG_LEVEL=DEBUG` that would put postback tokens in the logs.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            return True
        masked = mask_text(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


# The loggers that may quote request URLs. A filter on a logger sees only the records
# logged to that logger itself, not its children's, hence each by name.
HTTP_CLIENT_LOGGERS = (
    "aiohttp.client",
    "aiohttp.internal",
    "asyncio",
    "urllib3.connectionpool",
    "urllib3.connection",
    "urllib3.util.retry",
)


def install_log_masking() -> None:
    """Idempotent: attach one `MaskSecretsFilter` to each HTTP client logger."""
    for name in HTTP_CLIENT_LOGGERS:
        target = logging.getLogger(name)
        if not any(isinstance(existing, MaskSecretsFilter) for existing in target.filters):
            target.addFilter(MaskSecretsFilter())
