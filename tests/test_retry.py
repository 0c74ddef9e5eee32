"""Retry policy: Retry-After parsing, capped exponential backoff with jitter, what retries."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from conversions.delivery.retry import backoff_delay, is_retryable, parse_retry_after

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2", 2.0),
        (" 120 ", 120.0),
        ("0", 0.0),
        ("1.5", 1.5),
        ("99999999", 99999999.0),
        (format_datetime(NOW + timedelta(seconds=2), usegmt=True), 2.0),
        ("Sun, 01 Mar 2026 12:01:00 GMT", 60.0),
        ("Sun, 01 Mar 2026 11:59:00 GMT", 0.0),  # in the past: ready now
        ("Sunday, 01-Mar-26 12:00:30 GMT", 30.0),
        ("soon", None),
        ("-5", None),
        ("", None),
        (None, None),
        ("2 seconds", None),
        ("1e3", None),
        ("inf", None),
        ("Sun, 99 Foo 2026 12:00:00 GMT", None),
        ("9" * 400, None),
    ],
)
def test_parse_retry_after(value, expected):
    assert parse_retry_after(value, now=NOW) == expected


@pytest.mark.parametrize(
    ("attempt", "low", "high"),
    [
        (1, 0.5, 1.0),
        (2, 1.0, 2.0),
        (3, 2.0, 4.0),
        (5, 8.0, 16.0),
        (6, 15.0, 30.0),
        (50, 15.0, 30.0),
    ],
)
def test_equal_jitter_backoff_grows_and_is_capped(attempt, low, high):
    # given
    rng = random.Random(attempt)

    # when
    delays = [
        backoff_delay(attempt, retry_after=None, base=1.0, cap=30.0, rng=rng) for _ in range(200)
    ]

    # then
    assert all(low <= d <= high for d in delays)
    assert len(set(delays)) > 1  # jittered, not fixed


def test_full_jitter_spans_zero_to_the_ceiling():
    # given
    rng = random.Random(3)

    # when
    delays = [
        backoff_delay(3, retry_after=None, base=1.0, cap=30.0, rng=rng, jitter="full")
        for _ in range(200)
    ]

    # then
    assert all(0.0 <= d <= 4.0 for d in delays)
    assert min(delays) < 1.0 < 3.0 < max(delays)


@pytest.mark.parametrize(
    ("hint", "cap", "expected_min", "expected_max"),
    [
        (2.0, 30.0, 2.0, 2.0),  # hint above the backoff: wait exactly the hint
        (0.0, 30.0, 0.5, 1.0),  # hint of zero: still the normal backoff, no tight loop
        (99999999.0, 30.0, 30.0, 30.0),  # never beyond the cap
        (45.0, 10.0, 10.0, 10.0),
        (-3.0, 30.0, 0.5, 1.0),  # a bad hint is ignored
        (float("nan"), 30.0, 0.5, 1.0),
    ],
)
def test_retry_after_is_a_floor_below_the_cap(hint, cap, expected_min, expected_max):
    # given
    rng = random.Random(0)

    # when
    delays = [backoff_delay(1, retry_after=hint, base=1.0, cap=cap, rng=rng) for _ in range(50)]

    # then
    assert all(expected_min <= d <= expected_max for d in delays)


def test_rng_makes_delays_reproducible():
    first = [backoff_delay(2, retry_after=None, base=1, cap=30, rng=random.Random(7))]
    second = [backoff_delay(2, retry_after=None, base=1, cap=30, rng=random.Random(7))]
    assert first == second


@pytest.mark.parametrize(
    ("status", "error", "retryable"),
    [
        (None, "timeout", True),
        (None, "connection_error", True),
        (408, "http_status", True),
        (429, "http_status", True),
        (500, "http_status", True),
        (503, "http_status", True),
        (599, "http_status", True),
        (400, "http_status", False),
        (401, "http_status", False),
        (404, "http_status", False),
        (409, "http_status", False),
        (422, "http_status", False),
        (302, "http_status", False),
        (200, None, False),
        (None, "blocked_address", False),
        (None, "invalid_url", False),
        (503, "blocked_address", False),
    ],
)
def test_is_retryable(status, error, retryable):
    assert is_retryable(status, error) is retryable
