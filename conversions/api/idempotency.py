"""`Idempotency-Key`: the same key, user, body and flags within the TTL replays the first
answer and fires nothing again; the same key with another body or flags is a 422.

The record is claimed *before* the service runs (the unique (user, key) constraint makes
the claim atomic), so two identical requests racing each other never both fire: the
second waits for the first to store its answer and replays it (a 409 only if the first
is still running after `RETRIGGER_IDEMPOTENCY_WAIT` seconds). A request that ends in an error
releases its claim, so the client may retry with the same key.
"""

import hashlib
import json
import re
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from rest_framework import status
from rest_framework.exceptions import APIException

from conversions.models import IdempotencyRecord

HEADER = "Idempotency-Key"
# Visible ASCII, as in the IETF draft's sf-string; the column holds 255 characters.
_KEY_RE = re.compile(r"[\x21-\x7e]{1,255}")
PENDING = 0  # status_code of a claim whose first answer is not stored yet
_POLL_SECONDS = 0.1


class IdempotencyConflict(APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "A request with this Idempotency-Key is still being processed."
    default_code = "idempotency_conflict"


class IdempotencyMismatch(APIException):
    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    default_detail = "This Idempotency-Key was used with another body or other flags."
    default_code = "idempotency_mismatch"


@dataclass(frozen=True)
class Replay:
    status_code: int
    document: dict[str, Any]
    run_id: int | None


def key_errors(raw: str | None) -> list[str]:
    if raw is None or _KEY_RE.fullmatch(raw):
        return []
    return ["Must be 1 to 255 visible ASCII characters."]


def fingerprint(info: dict[str, Any]) -> str:
    """Of the criteria as understood plus the flags: equal bodies spelled differently
    (key order, spacing, UUID case) count as the same request."""
    canonical = json.dumps(info, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def claim(*, user, key: str, fingerprint: str) -> IdempotencyRecord | Replay:
    """A fresh claim to run the request, or the first answer to replay."""
    cutoff = timezone.now() - timedelta(seconds=settings.RETRIGGER_IDEMPOTENCY_TTL)
    IdempotencyRecord.objects.filter(user=user, key=key, created_at__lt=cutoff).delete()
    try:
        with transaction.atomic():
            return IdempotencyRecord.objects.create(
                user=user, key=key, fingerprint=fingerprint, status_code=PENDING, response={}
            )
    except IntegrityError:
        pass  # claimed before: replay it, or refuse
    deadline = time.monotonic() + settings.RETRIGGER_IDEMPOTENCY_WAIT
    while True:
        existing = IdempotencyRecord.objects.filter(user=user, key=key).first()
        if existing is None:
            raise IdempotencyConflict()  # released between our insert and this read
        if existing.fingerprint != fingerprint:
            raise IdempotencyMismatch()
        if existing.status_code != PENDING:
            return Replay(existing.status_code, existing.response, existing.run_id)
        if time.monotonic() >= deadline:
            raise IdempotencyConflict()
        time.sleep(_POLL_SECONDS)


def complete(
    record: IdempotencyRecord, *, status_code: int, document: dict, run_id: int | None
) -> None:
    record.status_code, record.response, record.run_id = status_code, document, run_id
    record.save(update_fields=["status_code", "response", "run"])


def release(record: IdempotencyRecord) -> None:
    IdempotencyRecord.objects.filter(pk=record.pk, status_code=PENDING).delete()
