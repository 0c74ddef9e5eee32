"""The search criteria of a re-trigger: parsed and validated once, then turned into SQL.

Every door (API, admin, command, background worker) builds a `Criteria` here, so the
rules of contract section 5 live in one place. Nothing unvalidated ever reaches the ORM:
integers are range-checked, UUIDs and dates parsed, sort keys allow-listed.

Decisions the contract leaves open:

- `sort` is echoed as the keys the client gave, in canonical spelling (`"-DATE"` ->
  `"-date"`); the `id` tie-breaker is implicit and not echoed. Repeating a column is
  refused, as is whitespace inside a key (spaces around commas are tolerated).
- Lists are de-duplicated in order of first appearance; each holds at most
  `MAX_LIST_ITEMS` values and all lists together `MAX_TOTAL_LIST_ITEMS`, which keeps
  every query under SQLite's bound-parameter ceiling.
- A date-only `toDate` is stored as the last microsecond of that day, so `<=` covers the
  whole day and the echo (`...T23:59:59.999999Z`) re-parses to the same value.
- Fractions of a second finer than a microsecond are rounded in the direction that
  keeps the comparison exact on microsecond columns.
"""

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone
from difflib import get_close_matches
from typing import Any

from django.conf import settings
from django.db.models import F, Q, QuerySet
from django.db.models.expressions import OrderBy
from rest_framework.exceptions import ValidationError

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
MAX_LIST_ITEMS = 10_000
MAX_TOTAL_LIST_ITEMS = 20_000
DEFAULT_LIMIT = 100
DEFAULT_SORT = ("id",)
NON_FIELD = "non_field_errors"

# Canonical sort key -> (column, nullable). Nullable columns get an explicit NULLS
# placement so SQLite pages exactly like PostgreSQL does.
SORT_COLUMNS: dict[str, tuple[str, bool]] = {
    "id": ("id", False),
    "date": ("converted_at", False),
    "createdAt": ("created_at", False),
    "updatedAt": ("updated_at", False),
    "affiliateId": ("affiliate_id", False),
    "accountId": ("account_id", False),
    "brandId": ("brand_id", True),
    "trafficSourceId": ("traffic_source_id", True),
    "conversionType": ("conversion_type_id", False),
    "clickId": ("click_id", False),
    "payout": ("payout", False),
    "status": ("status", False),
}
_SORT_BY_LOWER = {key.lower(): key for key in SORT_COLUMNS}
_SORT_KEY_RE = re.compile(r"(-?)([A-Za-z]+)")

_UUID_RE = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
# RFC 3339 date-time (seconds optional, any fraction length, `T`/space separator) or a
# bare date. ASCII digits only: `\d` would also accept other scripts' digits.
_DATETIME_RE = re.compile(
    r"(?P<year>[0-9]{4})-(?P<month>[0-9]{2})-(?P<day>[0-9]{2})"
    r"(?:[Tt ](?P<hour>[0-9]{2}):(?P<minute>[0-9]{2})"
    r"(?::(?P<second>[0-9]{2})(?:[.,](?P<fraction>[0-9]{1,30}))?)?"
    r"(?P<offset>[Zz]|[+-][0-9]{2}(?::?[0-9]{2})?)?)?"
)


# --- the criteria -------------------------------------------------------------------------


@dataclass(frozen=True)
class Criteria:
    """Validated criteria. A tuple is a filter (empty = nothing matches), None = no filter.

    Datetimes are aware UTC; `sort` holds canonical keys with an optional `-` prefix.
    """

    ids: tuple[int, ...] | None = None
    affiliate_ids: tuple[int, ...] | None = None
    account_ids: tuple[int, ...] | None = None
    click_ids: tuple[uuid.UUID, ...] | None = None
    conversion_type_ids: tuple[int, ...] | None = None
    brand_ids: tuple[int, ...] | None = None
    traffic_source_ids: tuple[int, ...] | None = None
    from_date: datetime | None = None
    to_date: datetime | None = None
    updated_since: datetime | None = None
    created_from: datetime | None = None
    offset: int = 0
    limit: int = DEFAULT_LIMIT
    sort: tuple[str, ...] = DEFAULT_SORT

    # -- echo ----------------------------------------------------------------------------

    def to_info(self, *, force: bool, dry_run: bool) -> dict[str, Any]:
        """The API's `info` object: every key present, dates as UTC ISO 8601 with `Z`."""
        return {
            "id": _list_or_none(self.ids),
            "affiliateId": _list_or_none(self.affiliate_ids),
            "accountId": _list_or_none(self.account_ids),
            "clickIds": None if self.click_ids is None else [str(c) for c in self.click_ids],
            "conversionTypes": _list_or_none(self.conversion_type_ids),
            "brandIds": _list_or_none(self.brand_ids),
            "trafficSourceId": _list_or_none(self.traffic_source_ids),
            "fromDate": _format_or_none(self.from_date),
            "toDate": _format_or_none(self.to_date),
            "updatedSince": _format_or_none(self.updated_since),
            "createdFrom": _format_or_none(self.created_from),
            "offset": self.offset,
            "limit": self.limit,
            "sort": ",".join(self.sort),
            "force": force,
            "dryRun": dry_run,
        }

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> "Criteria":
        """Re-create criteria from a stored `info` echo (a run's `criteria` JSON).

        The limit is not re-checked against today's `RETRIGGER_MAX_LIMIT`: the run was
        accepted under the setting of its day and must finish the same selection.
        """
        data = {key: value for key, value in info.items() if key not in ("force", "dryRun")}
        return parse_criteria(data, max_limit=INT32_MAX)

    # -- SQL -----------------------------------------------------------------------------

    def filter_q(self) -> Q:
        """The WHERE clause. An empty tuple yields an always-false `__in=[]`."""
        lookups: dict[str, Any] = {}
        for attr, lookup in _LIST_LOOKUPS:
            values = getattr(self, attr)
            if values is not None:
                lookups[lookup] = list(values)
        if self.from_date is not None:
            lookups["converted_at__gte"] = self.from_date
        if self.to_date is not None:
            lookups["converted_at__lte"] = self.to_date
        if self.updated_since is not None:
            lookups["updated_at__gt"] = self.updated_since
        if self.created_from is not None:
            lookups["created_at__gte"] = self.created_from
        return Q(**lookups)

    def order_by(self) -> list[OrderBy]:
        """ORDER BY terms; `id` always closes the list so paging is deterministic.

        The tie-breaker takes the direction of the last key, so a `(column, id)` index
        can be scanned in one direction (forwards or backwards) without a sort step.
        """
        terms: list[OrderBy] = []
        descending = False
        for key in self.sort:
            descending = key.startswith("-")
            column, nullable = SORT_COLUMNS[key.lstrip("-")]
            terms.append(_order_term(column, descending=descending, nullable=nullable))
        if not any(key.lstrip("-") == "id" for key in self.sort):
            terms.append(_order_term("id", descending=descending, nullable=False))
        return terms

    def apply(self, queryset: QuerySet) -> QuerySet:
        return queryset.filter(self.filter_q()).order_by(*self.order_by())


_LIST_LOOKUPS = (
    ("ids", "id__in"),
    ("affiliate_ids", "affiliate_id__in"),
    ("account_ids", "account_id__in"),
    ("click_ids", "click_id__in"),
    ("conversion_type_ids", "conversion_type_id__in"),
    ("brand_ids", "brand_id__in"),
    ("traffic_source_ids", "traffic_source_id__in"),
)


def _order_term(column: str, *, descending: bool, nullable: bool) -> OrderBy:
    # NULLS LAST ascending / FIRST descending is PostgreSQL's own default, so its
    # indexes still serve the scan; stating it makes SQLite agree.
    if descending:
        return F(column).desc(nulls_first=True if nullable else None)
    return F(column).asc(nulls_last=True if nullable else None)


def _list_or_none(values: tuple | None) -> list | None:
    return None if values is None else list(values)


def _format_or_none(value: datetime | None) -> str | None:
    return None if value is None else format_datetime(value)


def format_datetime(value: datetime) -> str:
    """UTC ISO 8601 ending in `Z`; microseconds only when there are any. Naive = UTC."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    spec = "microseconds" if value.microsecond else "seconds"
    return value.replace(tzinfo=None).isoformat(timespec=spec) + "Z"


# --- parsing ------------------------------------------------------------------------------


class _Refusal(Exception):
    """One message about one key, collected into the ValidationError."""


def _int_list(maximum: int) -> Callable[[object], tuple[int, ...]]:
    def parse(value: object) -> tuple[int, ...]:
        items = _as_list(value)
        parsed = [_int_item(item, index, maximum) for index, item in enumerate(items)]
        return tuple(dict.fromkeys(parsed))

    return parse


def _uuid_list(value: object) -> tuple[uuid.UUID, ...]:
    items = _as_list(value)
    parsed = [_uuid_item(item, index) for index, item in enumerate(items)]
    return tuple(dict.fromkeys(parsed))


def _as_list(value: object) -> list:
    if not isinstance(value, list):
        raise _Refusal(f"Expected a list of items but got type {_json_type(value)}.")
    if len(value) > MAX_LIST_ITEMS:
        raise _Refusal(f"Ensure this list has no more than {MAX_LIST_ITEMS} items.")
    return value


def _int_item(item: object, index: int, maximum: int) -> int:
    if type(item) is not int:  # bool is an int subclass; 1.0 and "7" are not ints here
        raise _Refusal(f"Item {index}: a valid integer is required, not {_json_type(item)}.")
    if not 1 <= item <= maximum:
        raise _Refusal(f"Item {index}: ensure this value is between 1 and {maximum}.")
    return item


def _uuid_item(item: object, index: int) -> uuid.UUID:
    if not isinstance(item, str) or not _UUID_RE.fullmatch(item):
        raise _Refusal(f"Item {index}: must be a valid UUID.")
    return uuid.UUID(item)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _datetime(rounding: str, *, end_of_day: bool = False) -> Callable[[object], datetime]:
    """A parser for one date key. `rounding` is `floor` or `ceil` for sub-microseconds."""

    def parse(value: object) -> datetime:
        if not isinstance(value, str):
            raise _Refusal(f"Expected a date-time string but got type {_json_type(value)}.")
        return _parse_datetime(value, rounding=rounding, end_of_day=end_of_day)

    return parse


def _parse_datetime(value: str, *, rounding: str = "floor", end_of_day: bool = False) -> datetime:
    """An RFC 3339 date-time (UTC when no offset) or a date (midnight UTC, or its last
    microsecond with `end_of_day`), as an aware UTC datetime. Raises `_Refusal`."""
    match = _DATETIME_RE.fullmatch(value)
    if match is None:
        raise _Refusal(
            "Date has wrong format. Use an ISO 8601 date (YYYY-MM-DD) or date-time "
            "(YYYY-MM-DDThh:mm:ss[.ffffff][Z|±hh:mm])."
        )
    parts = match.groupdict()
    try:
        day = date(int(parts["year"]), int(parts["month"]), int(parts["day"]))
        if parts["hour"] is None:
            return datetime.combine(day, time.max if end_of_day else time.min, tzinfo=UTC)
        micro, remainder = _fraction(parts["fraction"])
        moment = datetime.combine(
            day,
            time(int(parts["hour"]), int(parts["minute"]), int(parts["second"] or 0), micro),
            tzinfo=_offset(parts["offset"]),
        )
        if remainder and rounding == "ceil":
            moment += timedelta(microseconds=1)
        return moment.astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise _Refusal("Not a valid date or date-time (out of range).") from exc


def _exact_instant(value: str) -> tuple[datetime, str]:
    """An already valid date key as (whole-microsecond floor, finer digits) for exact
    comparison; a date alone counts as its first instant, like the filter."""
    match = _DATETIME_RE.fullmatch(value)
    finer = (match["fraction"] or "")[6:] if match and match["hour"] is not None else ""
    return _parse_datetime(value, rounding="floor"), finer.rstrip("0")


def _fraction(digits: str | None) -> tuple[int, bool]:
    """Microseconds, and whether finer digits were cut off."""
    if not digits:
        return 0, False
    return int(digits[:6].ljust(6, "0")), any(d != "0" for d in digits[6:])


def _offset(text: str | None) -> timezone:
    if text is None or text in ("Z", "z"):
        return UTC
    sign = -1 if text[0] == "-" else 1
    digits = text[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:] or 0)
    if hours > 23 or minutes > 59:
        raise ValueError("offset out of range")
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def _bounded_int(minimum: int, maximum: int) -> Callable[[object], int]:
    def parse(value: object) -> int:
        if type(value) is not int:
            raise _Refusal(f"A valid integer is required, not {_json_type(value)}.")
        if value < minimum:
            raise _Refusal(f"Ensure this value is greater than or equal to {minimum}.")
        if value > maximum:
            raise _Refusal(f"Ensure this value is less than or equal to {maximum}.")
        return value

    return parse


def parse_sort(value: object) -> tuple[str, ...]:
    """`"-date,id"` -> `("-date", "id")`; null or "" -> the default. Raises `_Refusal`."""
    if value is None or value == "":
        return DEFAULT_SORT
    if not isinstance(value, str):
        raise _Refusal(f"Expected a string but got type {_json_type(value)}.")
    keys: list[str] = []
    seen: set[str] = set()
    for position, raw in enumerate(value.split(",")):
        token = raw.strip(" ")
        match = _SORT_KEY_RE.fullmatch(token)
        if match is None:
            raise _Refusal(
                f"Key {position} is malformed: use a column name with an optional '-' "
                f"prefix, keys separated by commas (e.g. '-date,id')."
            )
        prefix, name = match.groups()
        column = _SORT_BY_LOWER.get(name.lower())
        if column is None:
            raise _Refusal(
                f"Unknown sort column {name[:40]!r}; choose from {', '.join(SORT_COLUMNS)}."
            )
        if column in seen:
            raise _Refusal(f"Sort column {column!r} appears more than once.")
        seen.add(column)
        keys.append(prefix + column)
    return tuple(keys)


# JSON key -> (Criteria field, parser). Parsers take a non-null value.
def _key_parsers(max_limit: int) -> dict[str, tuple[str, Callable[[object], Any]]]:
    return {
        "id": ("ids", _int_list(INT64_MAX)),
        "affiliateId": ("affiliate_ids", _int_list(INT32_MAX)),
        "accountId": ("account_ids", _int_list(INT32_MAX)),
        "clickIds": ("click_ids", _uuid_list),
        "conversionTypes": ("conversion_type_ids", _int_list(INT32_MAX)),
        "brandIds": ("brand_ids", _int_list(INT32_MAX)),
        "trafficSourceId": ("traffic_source_ids", _int_list(INT32_MAX)),
        # `>=` rounds a finer fraction up, `<=` and `>` round it down: exact either way.
        "fromDate": ("from_date", _datetime("ceil")),
        "toDate": ("to_date", _datetime("floor", end_of_day=True)),
        "updatedSince": ("updated_since", _datetime("floor")),
        "createdFrom": ("created_from", _datetime("ceil")),
        "offset": ("offset", _bounded_int(0, INT32_MAX)),
        "limit": ("limit", _bounded_int(1, max_limit)),
        "sort": ("sort", parse_sort),
    }


CRITERIA_KEYS: tuple[str, ...] = tuple(_key_parsers(1))


def parse_criteria(data: object, *, max_limit: int | None = None) -> Criteria:
    """Validate a decoded JSON body into `Criteria`, or raise DRF's ValidationError
    `{key: [messages]}` naming every bad key at once (`non_field_errors` across keys)."""
    if max_limit is None:
        max_limit = min(settings.RETRIGGER_MAX_LIMIT, INT32_MAX)
    if not isinstance(data, dict):
        raise ValidationError(
            {NON_FIELD: [f"Expected a JSON object but got type {_json_type(data)}."]}
        )
    parsers = _key_parsers(max_limit)
    errors: dict[str, list[str]] = {}
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in parsers:
            errors[str(key)] = [_unknown_key_message(str(key))]
            continue
        attr, parse = parsers[key]
        if value is None:
            continue  # null = no filter / the default
        try:
            values[attr] = parse(value)
        except _Refusal as refusal:
            errors[key] = [str(refusal)]
    if errors:
        raise ValidationError(errors)
    criteria = Criteria(**values)
    _check_across_keys(criteria, data)
    return criteria


def _unknown_key_message(key: str) -> str:
    close = get_close_matches(key, CRITERIA_KEYS, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"Unknown key.{hint} Allowed keys: {', '.join(CRITERIA_KEYS)}."


def _check_across_keys(criteria: Criteria, data: dict) -> None:
    if (
        criteria.from_date is not None
        and criteria.to_date is not None
        and criteria.from_date > criteria.to_date
        # Rounding to whole microseconds moves fromDate up and toDate down; equal
        # instants finer than that are not "after" (they simply match nothing).
        and _exact_instant(data["fromDate"]) > _exact_instant(data["toDate"])
    ):
        raise ValidationError({NON_FIELD: ["fromDate must not be after toDate."]})
    total = sum(len(getattr(criteria, attr) or ()) for attr, _ in _LIST_LOOKUPS)
    if total > MAX_TOTAL_LIST_ITEMS:
        raise ValidationError(
            {NON_FIELD: [f"All lists together may hold at most {MAX_TOTAL_LIST_ITEMS} values."]}
        )


def parse_flag(name: str, raw: str | None) -> bool:
    """A query flag: absent -> False; `true`/`false`/`1`/`0` in any case; else 400."""
    if raw is None:
        return False
    lowered = raw.lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise ValidationError({name: ["Must be one of true, false, 1 or 0."]})
