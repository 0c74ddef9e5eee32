"""Expand a postback URL template with a conversion's values.

Each value is percent-encoded exactly once, as a whole URL component (`quote(safe="")`),
so a value can never add a parameter, a path segment or a fragment to the URL; receivers
decode once and get the original back. Templates saved from a browser may hold the
braces percent-encoded (`%7Bclick_id%7D`), which count as the plain form.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from urllib.parse import quote

MACROS: frozenset[str] = frozenset(
    {
        "click_id",
        "conversion_id",
        "transaction_id",
        "payout",
        "revenue",
        "currency",
        "status",
        "conversion_type",
        "affiliate_id",
        "account_id",
        "brand_id",
        "traffic_source_id",
        "converted_at",
        "timestamp",
        "event_id",
        "sub1",
        "sub2",
        "sub3",
        "sub4",
        "sub5",
    }
)

# `{name}`, its percent-encoded twin `%7Bname%7D` (hex in either case) or a mix of both
# (editors sometimes encode only one brace). Names are matched case-sensitively:
# `{Click_ID}` is an unknown macro, refused at save time.
MACRO_PATTERN = re.compile(r"(?:\{|%7[Bb])([A-Za-z0-9_]+)(?:\}|%7[Dd])")

_CENT = Decimal("0.01")


def template_macros(template: str) -> set[str]:
    """Every macro name the template uses, in either brace spelling."""
    return {m.group(1) for m in MACRO_PATTERN.finditer(template)}


def macro_values(
    conversion: Any, *, conversion_type_name: str, event_id: uuid.UUID
) -> dict[str, str]:
    """The text of every macro for one conversion; a missing value is ''."""
    converted_at = conversion.converted_at
    values: dict[str, Any] = {
        "click_id": conversion.click_id,
        "conversion_id": conversion.pk,
        "transaction_id": conversion.transaction_id,
        "payout": _money(conversion.payout),
        "revenue": _money(conversion.revenue),
        "currency": conversion.currency,
        "status": conversion.status,
        "conversion_type": conversion_type_name,
        "affiliate_id": conversion.affiliate_id,
        "account_id": conversion.account_id,
        "brand_id": conversion.brand_id,
        "traffic_source_id": conversion.traffic_source_id,
        "converted_at": _iso_utc(converted_at),
        "timestamp": _unix_seconds(converted_at),
        "event_id": event_id,
    }
    for n in range(1, 6):
        values[f"sub{n}"] = getattr(conversion, f"sub{n}", None)
    return {name: "" if value is None else str(value) for name, value in values.items()}


def expand_url(template: str, values: dict[str, str]) -> str:
    """Fill every macro in one pass, so a value holding `{sub2}` is never expanded again.

    A macro without a value (unknown names included; save-time validation refuses those)
    becomes empty, and stray braces are encoded, so no literal `{`/`}` or macro is sent.
    """

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        return quote(values.get(name, ""), safe="")

    expanded = MACRO_PATTERN.sub(replace, template)
    # Values are already encoded, so any brace left came from the template itself.
    return expanded.replace("{", "%7B").replace("}", "%7D")


def _money(value: Decimal | int | float | str | None) -> str | None:
    if value is None:
        return None
    # 'f' keeps large or tiny amounts out of exponent notation ("1E+3").
    return format(Decimal(str(value)).quantize(_CENT, rounding=ROUND_HALF_UP), "f")


def _as_utc(value: datetime) -> datetime:
    # A naive datetime only appears with USE_TZ off; the project stores UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _iso_utc(value: datetime | None) -> str | None:
    if value is None:
        return None
    return _as_utc(value).isoformat().replace("+00:00", "Z")


def _unix_seconds(value: datetime | None) -> int | None:
    if value is None:
        return None
    return int(_as_utc(value).timestamp() // 1)
