"""OpenAPI descriptions of the re-trigger endpoints (drf-spectacular, OpenAPI 3.0).

Written as plain schema dicts rather than serializers: validation lives in
`conversions.criteria`, and these only have to say exactly what it accepts and what the
views answer, so schema-driven testing sees the real contract.
"""

from typing import Any

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse

from conversions.criteria import INT32_MAX, INT64_MAX, MAX_LIST_ITEMS, SORT_COLUMNS


def _ids(fmt: str, maximum: int, description: str) -> dict[str, Any]:
    return {
        "type": "array",
        "nullable": True,
        "maxItems": MAX_LIST_ITEMS,
        "description": f"{description}. null = no filter; [] matches nothing.",
        "items": {"type": "integer", "format": fmt, "minimum": 1, "maximum": maximum},
    }


def _sort_pattern() -> str:
    """Exactly the sort expressions `criteria.parse_sort` reads: known columns in any
    case (ECMA regexes have no case-insensitive flag, hence the letter classes), an
    optional `-`, commas with optional spaces around. Only a repeated column, which the
    pattern cannot express, is refused beyond it."""
    names = "|".join(
        "".join(f"[{c.lower()}{c.upper()}]" for c in name) for name in sorted(SORT_COLUMNS)
    )
    key = f" *-?(?:{names}) *"
    return f"^$|^{key}(?:,{key})*$"


def _max_limit() -> int:
    # Read when the schema module is imported (after settings are configured), so the
    # documented maximum is the deployment's own RETRIGGER_MAX_LIMIT.
    return min(settings.RETRIGGER_MAX_LIMIT, INT32_MAX)


def _date(description: str) -> dict[str, Any]:
    return {
        "type": "string",
        "format": "date-time",
        "nullable": True,
        "description": f"{description}. Without an offset: UTC. A date alone: midnight UTC.",
    }


CRITERIA_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "description": "Every key is optional and may be null (= no filter).",
    "properties": {
        "id": _ids("int64", INT64_MAX, "Conversion ids"),
        "affiliateId": _ids("int32", INT32_MAX, "Affiliate ids"),
        "accountId": _ids("int32", INT32_MAX, "Account ids (an account admin: only theirs)"),
        "clickIds": {
            "type": "array",
            "nullable": True,
            "maxItems": MAX_LIST_ITEMS,
            "description": "Click ids (UUIDs, any case). null = no filter; [] matches nothing.",
            "items": {"type": "string", "format": "uuid"},
        },
        "conversionTypes": _ids("int32", INT32_MAX, "Conversion type ids"),
        "brandIds": _ids("int32", INT32_MAX, "Brand ids"),
        "trafficSourceId": _ids("int32", INT32_MAX, "Traffic source ids"),
        "fromDate": _date("converted_at >= fromDate"),
        "toDate": _date("converted_at <= toDate; a date alone covers that whole day"),
        "updatedSince": _date("updated_at > updatedSince"),
        "createdFrom": _date("created_at >= createdFrom"),
        "offset": {
            "type": "integer",
            "format": "int32",
            "nullable": True,
            "minimum": 0,
            "maximum": INT32_MAX,
            "default": 0,
        },
        "limit": {
            "type": "integer",
            "format": "int32",
            "nullable": True,
            "minimum": 1,
            "maximum": _max_limit(),
            "default": 100,
            "description": "At most RETRIGGER_MAX_LIMIT (default 100000).",
        },
        "sort": {
            "type": "string",
            "nullable": True,
            "default": "id",
            "pattern": _sort_pattern(),
            "description": (
                "Comma-separated columns, each with an optional '-' for descending; "
                f"case-insensitive: {', '.join(SORT_COLUMNS)}. `id` is always the last "
                "tie-breaker."
            ),
        },
    },
}

_INFO_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "The criteria as understood: every key present, dates in UTC ISO 8601.",
    "required": [*CRITERIA_SCHEMA["properties"], "force", "dryRun"],
    "properties": {
        **CRITERIA_SCHEMA["properties"],
        "offset": {"type": "integer"},
        "limit": {"type": "integer"},
        "sort": {"type": "string", "example": "-date,id"},
        "force": {"type": "boolean"},
        "dryRun": {"type": "boolean"},
    },
}

_COUNT = {"type": "integer", "minimum": 0}
_RUN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": [
        "id",
        "status",
        "matched",
        "selected",
        "retriggered",
        "delivered",
        "failed",
        "skipped",
        "skippedByReason",
    ],
    "properties": {
        "id": {"type": "integer", "nullable": True, "description": "null in a dry run"},
        "status": {
            "type": "string",
            "enum": ["dry_run", "queued", "running", "completed", "failed", "cancelled"],
        },
        "matched": _COUNT,
        "selected": _COUNT,
        "processed": _COUNT,
        "retriggered": _COUNT,
        "delivered": _COUNT,
        "failed": _COUNT,
        "skipped": _COUNT,
        "skippedByReason": {"type": "object", "additionalProperties": _COUNT},
        "createdAt": {"type": "string", "format": "date-time", "nullable": True},
        "startedAt": {"type": "string", "format": "date-time", "nullable": True},
        "finishedAt": {"type": "string", "format": "date-time", "nullable": True},
        "heartbeatAt": {"type": "string", "format": "date-time", "nullable": True},
        "createdBy": {"type": "string"},
        "force": {"type": "boolean"},
    },
}

_PAIR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["postbackId", "outcome", "statusCode", "attempts", "error"],
    "properties": {
        "postbackId": {"type": "integer", "nullable": True},
        "outcome": {"type": "string", "enum": ["delivered", "failed", "skipped", "would_fire"]},
        "statusCode": {"type": "integer", "nullable": True},
        "attempts": _COUNT,
        "error": {"type": "string", "nullable": True},
    },
}

_RESULT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["conversionId", "outcome", "postbacks"],
    "properties": {
        "conversionId": {"type": "integer", "format": "int64"},
        "outcome": {"type": "string", "enum": ["delivered", "failed", "skipped", "would_fire"]},
        "postbacks": {"type": "array", "items": _PAIR_SCHEMA},
    },
}

RUN_DOCUMENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["info", "run"],
    "properties": {"info": _INFO_SCHEMA, "run": _RUN_SCHEMA},
}

RETRIGGER_DOCUMENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["info", "run"],
    "properties": {
        "info": _INFO_SCHEMA,
        "run": _RUN_SCHEMA,
        "results": {"type": "array", "items": _RESULT_SCHEMA},
    },
}

_DETAIL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["detail"],
    "properties": {"detail": {"type": "string"}},
}

_VALIDATION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Each bad key (or non_field_errors) with a list of messages.",
    "additionalProperties": {"type": "array", "items": {"type": "string"}},
}


def _detail(description: str) -> OpenApiResponse:
    return OpenApiResponse(response=_DETAIL_SCHEMA, description=description)


def _flag(name: str, description: str) -> OpenApiParameter:
    return OpenApiParameter(
        name=name,
        type=OpenApiTypes.STR,
        location=OpenApiParameter.QUERY,
        required=False,
        enum=["true", "false", "1", "0", "TRUE", "FALSE", "True", "False"],
        description=f"{description} `true`/`false`/`1`/`0` in any case; default false.",
    )


RETRIGGER_PARAMETERS = [
    _flag("force", "Fire rejected and already delivered conversions too."),
    _flag("dryRun", "Report what would happen; send and store nothing."),
    OpenApiParameter(
        name="Idempotency-Key",
        type=OpenApiTypes.STR,
        location=OpenApiParameter.HEADER,
        required=False,
        pattern=r"^[\x21-\x7e]{1,255}$",
        description=(
            "The same key from the same user with the same body and flags within "
            "RETRIGGER_IDEMPOTENCY_TTL (24 h) returns the first answer and fires nothing "
            "again. Dry runs ignore it."
        ),
    ),
]

# application/*+json is accepted too; one such type stands for the family.
RETRIGGER_REQUEST = {
    "application/json": CRITERIA_SCHEMA,
    "text/json": CRITERIA_SCHEMA,
    "application/merge-patch+json": CRITERIA_SCHEMA,
}

AUTH_RESPONSES = {
    401: _detail("No or bad token. `WWW-Authenticate` names the Token and Bearer schemes."),
}

RETRIGGER_RESPONSES = {
    200: OpenApiResponse(
        response=RETRIGGER_DOCUMENT_SCHEMA,
        description="Finished within the request (every dry run, and small selections).",
        examples=[
            OpenApiExample(
                "dry run",
                value={
                    "info": {"affiliateId": [3], "limit": 100, "sort": "id", "dryRun": True},
                    "run": {"id": None, "status": "dry_run", "matched": 1, "selected": 1},
                },
            )
        ],
    ),
    202: OpenApiResponse(
        response=RETRIGGER_DOCUMENT_SCHEMA,
        description=(
            "Queued (more than RETRIGGER_SYNC_MAX selected): no `results`; header "
            "`Location: /api/conversions/retrigger-runs/<id>`."
        ),
    ),
    400: OpenApiResponse(
        response=_VALIDATION_SCHEMA,
        description=(
            "Bad criteria, flags, unknown keys or malformed JSON (including a key given "
            "twice and text that is not valid Unicode, such as a lone `\\ud800`)."
        ),
    ),
    **AUTH_RESPONSES,
    403: _detail("Not an account admin, or `accountId` names an account not theirs."),
    405: _detail("Only POST."),
    413: _detail("Body larger than DATA_UPLOAD_MAX_MEMORY_SIZE."),
    409: _detail("The first request with this Idempotency-Key is still being processed."),
    415: _detail("Body is not JSON (application/json, text/json, application/*+json)."),
    422: _detail("This Idempotency-Key was used with another body or other flags."),
    429: _detail("Throttled (per user, RETRIGGER_THROTTLE_RATE); see `Retry-After`."),
}

RUN_RESPONSES = {
    200: OpenApiResponse(response=RUN_DOCUMENT_SCHEMA, description="The run and its counts."),
    **AUTH_RESPONSES,
    404: _detail("No such run, or not visible to this user."),
    405: _detail("Wrong method."),
}
