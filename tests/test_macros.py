"""Every macro's value, and how templates are expanded."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from urllib.parse import unquote

import pytest

from conversions.delivery.macros import MACROS, expand_url, macro_values, template_macros
from conversions.models import Conversion

EVENT_ID = uuid.UUID("3b0f6a7e-0c7d-4a55-9d43-5d3a3c3b8f10")
CLICK_ID = uuid.UUID("9b2f0c1e-1111-4a4a-8b8b-000000000001")


def conversion(**kw) -> Conversion:
    values = {
        "id": 9_000_000_000_123,
        "account_id": 11,
        "affiliate_id": 3,
        "brand_id": 5,
        "traffic_source_id": 7,
        "conversion_type_id": 2,
        "click_id": CLICK_ID,
        "transaction_id": "tx-42",
        "status": "approved",
        "payout": Decimal("7.1"),
        "revenue": Decimal("12"),
        "currency": "EUR",
        "converted_at": datetime(2026, 1, 15, 12, 0, 5, tzinfo=UTC),
        "sub1": "a",
        "sub2": "b",
        "sub3": "c",
        "sub4": "d",
        "sub5": "e",
    }
    values.update(kw)
    return Conversion(**values)


def values_for(**kw) -> dict[str, str]:
    return macro_values(conversion(**kw), conversion_type_name="deposit", event_id=EVENT_ID)


EXPECTED = {
    "click_id": "9b2f0c1e-1111-4a4a-8b8b-000000000001",
    "conversion_id": "9000000000123",
    "transaction_id": "tx-42",
    "payout": "7.10",
    "revenue": "12.00",
    "currency": "EUR",
    "status": "approved",
    "conversion_type": "deposit",
    "affiliate_id": "3",
    "account_id": "11",
    "brand_id": "5",
    "traffic_source_id": "7",
    "converted_at": "2026-01-15T12:00:05Z",
    "timestamp": "1768478405",
    "event_id": "3b0f6a7e-0c7d-4a55-9d43-5d3a3c3b8f10",
    "sub1": "a",
    "sub2": "b",
    "sub3": "c",
    "sub4": "d",
    "sub5": "e",
}


def test_the_macro_set_is_the_contracts():
    assert set(EXPECTED) == MACROS


@pytest.mark.parametrize(("name", "expected"), sorted(EXPECTED.items()))
def test_every_macro_value(name, expected):
    # when
    values = values_for()

    # then
    assert values[name] == expected


@pytest.mark.parametrize(("name", "expected"), sorted(EXPECTED.items()))
def test_every_macro_expands_in_a_template(name, expected):
    # when
    url = expand_url(f"https://t.example/pb?v={{{name}}}", values_for())

    # then
    assert url == f"https://t.example/pb?v={expected.replace(':', '%3A')}"
    assert unquote(url.split("v=", 1)[1]) == expected


@pytest.mark.parametrize(
    ("field", "value", "macro"),
    [
        ("brand_id", None, "brand_id"),
        ("traffic_source_id", None, "traffic_source_id"),
        ("sub3", "", "sub3"),
        ("transaction_id", "", "transaction_id"),
    ],
)
def test_missing_values_become_empty(field, value, macro):
    # when
    url = expand_url(f"https://t.example/pb?v={{{macro}}}&z=1", values_for(**{field: value}))

    # then
    assert url == "https://t.example/pb?v=&z=1"


@pytest.mark.parametrize(
    ("payout", "expected"),
    [
        (Decimal("7.1"), "7.10"),
        (Decimal("0"), "0.00"),
        (Decimal("1E+3"), "1000.00"),
        (Decimal("123456789012.34"), "123456789012.34"),
        (Decimal("0.005"), "0.01"),
        (Decimal("-2.5"), "-2.50"),
    ],
)
def test_money_has_two_decimals_and_a_dot(payout, expected):
    assert values_for(payout=payout)["payout"] == expected


@pytest.mark.parametrize(
    ("converted_at", "iso", "unix"),
    [
        (datetime(1970, 1, 1, tzinfo=UTC), "1970-01-01T00:00:00Z", "0"),
        (
            datetime(2026, 1, 15, 14, 0, tzinfo=timezone(timedelta(hours=2))),
            "2026-01-15T12:00:00Z",
            "1768478400",
        ),
        (
            datetime(2026, 1, 15, 12, 0, 0, 250000, tzinfo=UTC),
            "2026-01-15T12:00:00.250000Z",
            "1768478400",
        ),
    ],
)
def test_converted_at_is_utc_iso_and_timestamp_is_its_unix_seconds(converted_at, iso, unix):
    # when
    values = values_for(converted_at=converted_at)

    # then
    assert (values["converted_at"], values["timestamp"]) == (iso, unix)


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        ("x&y=z w/ü%41", "x%26y%3Dz%20w%2F%C3%BC%2541"),
        ("a&b=c d", "a%26b%3Dc%20d"),
        ("#frag?q", "%23frag%3Fq"),
        ("+plus", "%2Bplus"),
        ("{sub2}", "%7Bsub2%7D"),
        ("%7Bsub2%7D", "%257Bsub2%257D"),
    ],
)
def test_values_are_encoded_exactly_once(value, encoded):
    # when
    url = expand_url("https://t.example/pb?s={sub1}&t={sub2}", values_for(sub1=value))

    # then
    assert url == f"https://t.example/pb?s={encoded}&t=b"
    assert unquote(encoded) == value


@pytest.mark.parametrize(
    "template",
    [
        "https://t.example/pb?c={click_id}",
        "https://t.example/pb?c=%7Bclick_id%7D",
        "https://t.example/pb?c=%7bclick_id%7d",
        "https://t.example/pb?c=%7Bclick_id}",
    ],
)
def test_encoded_braces_count_as_plain_ones(template):
    # when
    url = expand_url(template, values_for())

    # then
    assert url == "https://t.example/pb?c=9b2f0c1e-1111-4a4a-8b8b-000000000001"


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("https://t.example/pb?x={nope}", "https://t.example/pb?x="),
        ("https://t.example/pb?x={Click_ID}", "https://t.example/pb?x="),
        ("https://t.example/pb?x={a-b}&y={", "https://t.example/pb?x=%7Ba-b%7D&y=%7B"),
        ("https://t.example/p}b", "https://t.example/p%7Db"),
    ],
)
def test_no_literal_brace_or_unknown_macro_is_left(template, expected):
    # when
    url = expand_url(template, values_for())

    # then
    assert url == expected
    assert "{" not in url and "}" not in url


def test_template_macros_finds_both_spellings():
    # when
    found = template_macros("https://t.example/{sub1}?a=%7Bpayout%7D&b=%7bnope%7d&c={x-y}")

    # then
    assert found == {"sub1", "payout", "nope"}
