"""Expand a postback URL template with a conversion's values.

Each value is percent-encoded exactly once, as a whole URL component (`quote(safe="")`),
so a value can never add a parameter, a path segment or a fragment to the URL; receivers
decode once and get the original back. Templates saved from a browser may hold the
braces percent-encoded (`%7Bclick_id%7D`), which count as the plain form.
"""

from __future__ import annotations

import functools
import re
import uuid
from collections.abc import Callable, Iterable
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
    conversion: Any,
    *,
    conversion_type_name: str,
    event_id: uuid.UUID | str,
    names: Iterable[str] = MACROS,
) -> dict[str, str]:
    """The text of each macro in `names` (default: every one) for one conversion.

    A missing value is ''. Names that are not macros are left out (they expand to '').
    A GET postback asks only for the macros its template uses.
    """
    values: dict[str, str] = {}
    for name in names:
        read = _READERS.get(name)
        if read is not None:
            value = read(conversion, conversion_type_name, event_id)
            values[name] = "" if value is None else str(value)
    return values


def template_names(template: str) -> frozenset[str]:
    """The macros a template uses, as `macro_values(names=...)` takes them."""
    return _compiled(template)[1]


def expand_url(template: str, values: dict[str, str]) -> str:
    """Fill every macro in one pass, so a value holding `{sub2}` is never expanded again.

    A macro without a value (unknown names included; save-time validation refuses those)
    becomes empty, and stray braces are encoded, so no literal `{`/`}` or macro is sent.
    """
    literals, _ = _compiled(template)
    if len(literals) == 1:
        return literals[0]
    out = [literals[0]]
    for index in range(1, len(literals), 2):
        out.append(quote(values.get(literals[index], ""), safe=""))
        out.append(literals[index + 1])
    return "".join(out)


@functools.lru_cache(maxsize=1024)  # a run expands the same few templates many times
def _compiled(template: str) -> tuple[tuple[str, ...], frozenset[str]]:
    """(literal, name, literal, name, ..., literal) and the names, from one parse.

    Braces left in the literals came from the template itself and are encoded here;
    values are encoded whole (`quote(safe="")`), so they can hold none.
    """
    pieces: list[str] = []
    position = 0
    for match in MACRO_PATTERN.finditer(template):
        pieces.append(_encode_braces(template[position : match.start()]))
        pieces.append(match.group(1))
        position = match.end()
    pieces.append(_encode_braces(template[position:]))
    return tuple(pieces), frozenset(pieces[1::2])


def _encode_braces(text: str) -> str:
    return text.replace("{", "%7B").replace("}", "%7D")


def _sub(n: int) -> Callable[[Any, str, uuid.UUID], Any]:
    return lambda c, _t, _e: getattr(c, f"sub{n}", None)


_READERS: dict[str, Callable[[Any, str, uuid.UUID], Any]] = {
    "click_id": lambda c, _t, _e: c.click_id,
    "conversion_id": lambda c, _t, _e: c.pk,
    "transaction_id": lambda c, _t, _e: c.transaction_id,
    "payout": lambda c, _t, _e: _money(c.payout),
    "revenue": lambda c, _t, _e: _money(c.revenue),
    "currency": lambda c, _t, _e: c.currency,
    "status": lambda c, _t, _e: c.status,
    "conversion_type": lambda _c, t, _e: t,
    "affiliate_id": lambda c, _t, _e: c.affiliate_id,
    "account_id": lambda c, _t, _e: c.account_id,
    "brand_id": lambda c, _t, _e: c.brand_id,
    "traffic_source_id": lambda c, _t, _e: c.traffic_source_id,
    "converted_at": lambda c, _t, _e: _iso_utc(c.converted_at),
    "timestamp": lambda c, _t, _e: _unix_seconds(c.converted_at),
    "event_id": lambda _c, _t, e: e,
    **{f"sub{n}": _sub(n) for n in range(1, 6)},
}


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
