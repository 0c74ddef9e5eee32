"""Save-time checks of a postback URL template.

Refused here (so the admin form, `full_clean()` and model-backed serializers refuse it):
unknown macros, schemes other than http/https, a missing or malformed host, macros in
the scheme/host/port (the destination must be fixed when the postback is saved, or this
check would mean nothing), and hosts that are blocked address literals in any spelling.
Names are not resolved here: DNS can change, so the send-time guard decides for names.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from django.core.exceptions import ValidationError

from conversions.delivery.guard import host_looks_numeric, is_blocked_ip, parse_host_literal
from conversions.delivery.macros import MACRO_PATTERN, MACROS, template_macros

_FORBIDDEN_CHARS = re.compile(r"[\s\x00-\x1f\x7f]")
# The authority (userinfo, host, port) read without parsing it, which a macro could break.
_AUTHORITY = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://([^/?#]*)")


def validate_postback_template(url: str) -> None:
    if not url or not url.strip():
        raise ValidationError("Enter a postback URL.", code="required")
    unknown = sorted(template_macros(url) - MACROS)
    if unknown:
        raise ValidationError(
            "Unknown macro(s): %(names)s. Known: %(known)s.",
            code="unknown_macro",
            params={
                "names": ", ".join(f"{{{n}}}" for n in unknown),
                "known": ", ".join(sorted(MACROS)),
            },
        )
    if _FORBIDDEN_CHARS.search(url):
        raise ValidationError(
            "The URL must not contain spaces or control characters.", code="invalid"
        )

    authority = _AUTHORITY.match(url)
    if authority and MACRO_PATTERN.search(authority.group(1)):
        raise ValidationError(
            "Macros are not allowed in the host, port or credentials.", code="macro_in_host"
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValidationError(
            "Enter a valid URL: %(reason)s.", code="invalid", params={"reason": exc}
        ) from exc
    if parts.scheme.lower() not in ("http", "https"):
        raise ValidationError("Only http and https URLs are allowed.", code="invalid_scheme")
    host = parts.hostname or ""
    if not host:
        raise ValidationError("The URL has no host.", code="missing_host")
    if port == 0:
        raise ValidationError("Enter a valid port.", code="invalid")
    if not host.isascii():
        # IDNA maps look-alike dots (U+3002, U+FF0E, ...) to '.', so '127。0。0。2' is
        # 127.0.0.2 to a resolver: judge the host in the form it would be looked up.
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise ValidationError(
                "The host %(host)s is not valid.", code="invalid_host", params={"host": host}
            ) from exc

    address = parse_host_literal(host)
    if address is None:
        if ":" in host or "%" in host or host_looks_numeric(host):
            raise ValidationError(
                "The host %(host)s is not valid.", code="invalid_host", params={"host": host}
            )
        return
    if is_blocked_ip(address):
        raise ValidationError(
            "The host %(host)s is a blocked address (%(address)s).",
            code="blocked_address",
            params={"host": host, "address": str(address)},
        )
