"""When to try a postback again, and how long to wait first.

Policy: timeouts, connection errors, 408, 429 and 5xx are worth another try; any other
answer is the receiver's final word, and a blocked or malformed destination will not get
better by waiting. Waits grow as `base * 2**(n-1)` up to `cap`, with jitter so that many
pairs failing together do not come back together. A `Retry-After` hint is a floor, never
a ceiling beyond `cap`: `Retry-After: 99999999` must not park a worker.
"""

from __future__ import annotations

import math
import random
import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Literal

RETRYABLE_ERRORS = frozenset({"timeout", "connection_error"})
FINAL_ERRORS = frozenset({"blocked_address", "invalid_url"})
RETRYABLE_STATUSES = frozenset({408, 429})

_SECONDS = re.compile(r"\d+(\.\d+)?")
_rng = random.Random()


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` value (delay-seconds or HTTP-date).

    Garbage, negative numbers and empty values give None (no hint); a date in the past
    gives 0.0 (the receiver is ready now).
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if _SECONDS.fullmatch(text):
        seconds = float(text)
        return seconds if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:  # "-0000" means UTC with unknown origin
        when = when.replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    return max(0.0, (when - now).total_seconds())


def backoff_delay(
    attempt_number: int,
    *,
    retry_after: float | None,
    base: float,
    cap: float,
    rng: random.Random | None = None,
    jitter: Literal["equal", "full"] = "equal",
) -> float:
    """Seconds to wait after failed attempt `attempt_number` (1-based).

    Equal jitter (half fixed, half random) is the default: it spreads retries like full
    jitter but never retries almost at once, which matters when `Retry-After` is garbage.
    """
    cap = max(0.0, cap)
    exponent = min(max(attempt_number, 1) - 1, 60)  # 2**60 * base is past any cap
    ceiling = min(cap, max(0.0, base) * 2.0**exponent)
    rng = rng or _rng
    if jitter == "full":
        delay = rng.uniform(0.0, ceiling)
    else:
        delay = ceiling / 2 + rng.uniform(0.0, ceiling / 2)
    if retry_after is not None and math.isfinite(retry_after) and retry_after >= 0:
        delay = max(delay, retry_after)
    return min(delay, cap)


def is_retryable(status_code: int | None, error: str | None) -> bool:
    if error in FINAL_ERRORS:
        return False
    if error in RETRYABLE_ERRORS:
        return True
    if status_code is None:
        return False
    return status_code in RETRYABLE_STATUSES or 500 <= status_code <= 599
