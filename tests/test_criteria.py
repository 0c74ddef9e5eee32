"""Parsing, echo and SQL shape of the search criteria (no HTTP)."""

import uuid
from datetime import UTC, datetime

import pytest
from rest_framework.exceptions import ValidationError

from conversions.criteria import (
    INT32_MAX,
    INT64_MAX,
    MAX_LIST_ITEMS,
    Criteria,
    format_datetime,
    parse_criteria,
    parse_flag,
)

UUID_1 = "9b2f0c1e-1111-4a4a-8b8b-000000000001"

INFO_KEYS = {
    "id",
    "affiliateId",
    "accountId",
    "clickIds",
    "conversionTypes",
    "brandIds",
    "trafficSourceId",
    "fromDate",
    "toDate",
    "updatedSince",
    "createdFrom",
    "offset",
    "limit",
    "sort",
    "force",
    "dryRun",
}


def refusal(data: object, **kw) -> dict:
    with pytest.raises(ValidationError) as caught:
        parse_criteria(data, **kw)
    assert isinstance(caught.value.detail, dict)
    return caught.value.detail


# --- accepted input and its echo ---------------------------------------------------------


def test_empty_body_means_defaults_and_every_info_key_is_present():
    # given / when
    criteria = parse_criteria({})
    info = criteria.to_info(force=False, dry_run=True)

    # then
    assert criteria == Criteria()
    assert set(info) == INFO_KEYS
    assert info == {
        **dict.fromkeys(INFO_KEYS),
        "offset": 0,
        "limit": 100,
        "sort": "id",
        "force": False,
        "dryRun": True,
    }


def test_every_key_null_means_no_filter():
    # given
    body = dict.fromkeys(INFO_KEYS - {"force", "dryRun"})

    # when
    criteria = parse_criteria(body)

    # then
    assert criteria == Criteria()


@pytest.mark.parametrize(
    ("body", "attr", "expected"),
    [
        ({"id": [1, INT64_MAX]}, "ids", (1, INT64_MAX)),
        ({"affiliateId": [7, 8, 7]}, "affiliate_ids", (7, 8)),
        ({"accountId": [INT32_MAX]}, "account_ids", (INT32_MAX,)),
        ({"conversionTypes": [2]}, "conversion_type_ids", (2,)),
        ({"brandIds": [11]}, "brand_ids", (11,)),
        ({"trafficSourceId": [5, 6]}, "traffic_source_ids", (5, 6)),
        ({"affiliateId": []}, "affiliate_ids", ()),
        ({"clickIds": [UUID_1.upper(), UUID_1]}, "click_ids", (uuid.UUID(UUID_1),)),
        ({"offset": 5}, "offset", 5),
        ({"limit": 1}, "limit", 1),
        ({"limit": None}, "limit", 100),
        ({"sort": None}, "sort", ("id",)),
        ({"sort": ""}, "sort", ("id",)),
        ({"sort": "-DATE, id"}, "sort", ("-date", "id")),
        ({"sort": "trafficsourceid,-CREATEDAT"}, "sort", ("trafficSourceId", "-createdAt")),
    ],
)
def test_accepted_values(body, attr, expected):
    # when
    criteria = parse_criteria(body)

    # then
    assert getattr(criteria, attr) == expected


@pytest.mark.parametrize(
    ("key", "raw", "echo"),
    [
        ("fromDate", "2026-01-01", "2026-01-01T00:00:00Z"),
        ("fromDate", "2026-01-01T10:20:30", "2026-01-01T10:20:30Z"),
        ("fromDate", "2026-01-01T02:00:00+02:00", "2026-01-01T00:00:00Z"),
        ("fromDate", "2026-01-01t00:00:00.5z", "2026-01-01T00:00:00.500000Z"),
        ("fromDate", "2026-01-01T00:00-0130", "2026-01-01T01:30:00Z"),
        ("toDate", "2026-02-15", "2026-02-15T23:59:59.999999Z"),
        ("toDate", "2026-02-15T12:00:00Z", "2026-02-15T12:00:00Z"),
        ("updatedSince", "2026-03-01 08:00:00Z", "2026-03-01T08:00:00Z"),
        ("createdFrom", "2025-12-31T23:00:00-01:00", "2026-01-01T00:00:00Z"),
        # Finer than microseconds: `>=` rounds up, `<=` and `>` round down.
        ("fromDate", "2026-01-01T00:00:00.0000001Z", "2026-01-01T00:00:00.000001Z"),
        ("toDate", "2026-01-01T00:00:00.0000019Z", "2026-01-01T00:00:00.000001Z"),
        ("updatedSince", "2026-01-01T00:00:00.9999999Z", "2026-01-01T00:00:00.999999Z"),
        ("createdFrom", "2026-01-01T23:59:59.9999991Z", "2026-01-02T00:00:00Z"),
    ],
)
def test_dates_are_understood_as_utc_and_echoed_with_z(key, raw, echo):
    # when
    info = parse_criteria({key: raw}).to_info(force=False, dry_run=False)

    # then
    assert info[key] == echo


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"affiliateId": [3], "fromDate": "2026-01-01", "toDate": "2026-02-15"},
        {"clickIds": [UUID_1.upper()], "id": [], "sort": "-PAYOUT,Status", "offset": 9},
        {"updatedSince": "2026-01-01T00:00:00.123456+05:30", "limit": 7, "brandIds": None},
    ],
)
def test_info_echo_re_parses_to_the_same_criteria(body):
    # given
    criteria = parse_criteria(body)

    # when
    again = Criteria.from_info(criteria.to_info(force=True, dry_run=False))

    # then
    assert again == criteria


def test_from_info_keeps_a_limit_accepted_under_an_older_maximum(settings):
    # given: a run accepted while the maximum was higher
    settings.RETRIGGER_MAX_LIMIT = 10
    info = Criteria(limit=500).to_info(force=False, dry_run=False)

    # when
    criteria = Criteria.from_info(info)

    # then
    assert criteria.limit == 500


# --- refusals --------------------------------------------------------------------------------

BAD_BODIES = [
    ({"affiliateIds": [7]}, "affiliateIds"),
    ({"affiliateId": 7}, "affiliateId"),
    ({"affiliateId": "7,8"}, "affiliateId"),
    ({"affiliateId": [True]}, "affiliateId"),
    ({"affiliateId": [1.0]}, "affiliateId"),
    ({"affiliateId": ["7"]}, "affiliateId"),
    ({"affiliateId": [0]}, "affiliateId"),
    ({"affiliateId": [-3]}, "affiliateId"),
    ({"affiliateId": [INT32_MAX + 1]}, "affiliateId"),
    ({"affiliateId": [[1]]}, "affiliateId"),
    ({"accountId": [None]}, "accountId"),
    ({"brandIds": {"0": 1}}, "brandIds"),
    ({"trafficSourceId": [2**31]}, "trafficSourceId"),
    ({"conversionTypes": 1}, "conversionTypes"),
    ({"id": [INT64_MAX + 1]}, "id"),
    ({"id": [10**400]}, "id"),
    ({"clickIds": [UUID_1[:-1] + "z"]}, "clickIds"),
    ({"clickIds": ["", UUID_1]}, "clickIds"),
    ({"clickIds": UUID_1}, "clickIds"),
    ({"clickIds": ["{" + UUID_1 + "}"]}, "clickIds"),
    ({"clickIds": [UUID_1.replace("-", "")]}, "clickIds"),
    ({"fromDate": "yesterday"}, "fromDate"),
    ({"fromDate": "2026-13-01"}, "fromDate"),
    ({"fromDate": "2026-02-30"}, "fromDate"),
    ({"fromDate": "2026-01-01T25:00:00Z"}, "fromDate"),
    ({"fromDate": "2026-01-01T00:00:00+24:00"}, "fromDate"),
    ({"fromDate": "0001-01-01T00:00:00+01:00"}, "fromDate"),
    ({"toDate": "9999-12-31T23:00:00-02:00"}, "toDate"),
    ({"toDate": "\uff12\uff10\uff12\uff16-01-01"}, "toDate"),  # full-width digits
    ({"toDate": 20260101}, "toDate"),
    ({"updatedSince": ["2026-01-01"]}, "updatedSince"),
    ({"createdFrom": ""}, "createdFrom"),
    ({"offset": -1}, "offset"),
    ({"offset": "ten"}, "offset"),
    ({"offset": 2**31}, "offset"),
    ({"limit": 0}, "limit"),
    ({"limit": -5}, "limit"),
    ({"limit": 1.0}, "limit"),
    ({"limit": 100_000_000}, "limit"),
    ({"limit": False}, "limit"),
    ({"sort": "--date"}, "sort"),
    ({"sort": "-"}, "sort"),
    ({"sort": ","}, "sort"),
    ({"sort": "id,,date"}, "sort"),
    ({"sort": "date desc"}, "sort"),
    ({"sort": "date,"}, "sort"),
    ({"sort": "transaction_id"}, "sort"),
    ({"sort": "date,-DATE"}, "sort"),
    ({"sort": "+date"}, "sort"),
    ({"sort": ["date"]}, "sort"),
    ({"sort": " "}, "sort"),
]


@pytest.mark.parametrize(("body", "key"), BAD_BODIES)
def test_refusals_name_the_key(body, key):
    # when
    errors = refusal(body)

    # then
    assert list(errors) == [key]
    assert errors[key] and all(isinstance(message, str) for message in errors[key])


@pytest.mark.parametrize("data", [[], "x", 1, None, True, [{"id": [1]}]])
def test_a_non_object_body_is_a_non_field_error(data):
    assert list(refusal(data)) == ["non_field_errors"]


def test_several_bad_keys_are_named_at_once():
    # when
    errors = refusal({"affiliateId": 7, "sort": "-", "bogus": 1, "limit": 5})

    # then
    assert set(errors) == {"affiliateId", "sort", "bogus"}


def test_a_bad_uuid_is_named_by_position():
    # when
    errors = refusal({"clickIds": [UUID_1, UUID_1, "nope"]})

    # then
    assert "Item 2" in errors["clickIds"][0]


def test_an_unknown_key_suggests_the_right_one():
    assert "affiliateId" in refusal({"affiliateIds": [7]})["affiliateIds"][0]


@pytest.mark.parametrize(
    "body",
    [
        {"fromDate": "2026-02-02", "toDate": "2026-02-01"},
        {"fromDate": "2026-02-01T00:00:00.000001Z", "toDate": "2026-02-01T00:00:00Z"},
    ],
)
def test_from_date_after_to_date_is_refused_across_keys(body):
    assert list(refusal(body)) == ["non_field_errors"]


def test_from_date_equal_to_a_date_only_to_date_is_accepted():
    # given: both name the same day
    criteria = parse_criteria({"fromDate": "2026-02-15", "toDate": "2026-02-15"})

    # then: the whole day
    assert criteria.from_date == datetime(2026, 2, 15, tzinfo=UTC)
    assert criteria.to_date == datetime(2026, 2, 15, 23, 59, 59, 999999, tzinfo=UTC)


def test_limit_maximum_is_read_from_settings_at_call_time(settings):
    # given
    settings.RETRIGGER_MAX_LIMIT = 50

    # when / then
    assert parse_criteria({"limit": 50}).limit == 50
    assert "50" in refusal({"limit": 51})["limit"][0]


def test_overlong_lists_are_refused():
    # when
    errors = refusal({"id": list(range(1, MAX_LIST_ITEMS + 2))})

    # then
    assert list(errors) == ["id"]


def test_too_many_values_across_lists_are_refused():
    # given: each list within its own cap, together over the total cap
    body = {key: list(range(1, MAX_LIST_ITEMS + 1)) for key in ("id", "affiliateId", "brandIds")}

    # when / then
    assert list(refusal(body)) == ["non_field_errors"]


WEIRD_VALUES = [
    None,
    True,
    0,
    -1,
    2**64,
    10**1000,
    1.5,
    float("nan"),
    float("inf"),
    "",
    "\x00",
    "x" * 10_000,
    [],
    [None],
    [[[[[]]]]],
    {},
    {"a": [1]},
    ["\ud800"],
]


@pytest.mark.parametrize("key", [*sorted(INFO_KEYS - {"force", "dryRun"}), "unknown"])
@pytest.mark.parametrize("value", WEIRD_VALUES)
def test_any_json_value_either_parses_or_is_a_validation_error(key, value):
    # when
    try:
        outcome = parse_criteria({key: value})
    except ValidationError as exc:
        outcome = exc

    # then: never another exception, and a refusal names the key
    if isinstance(outcome, ValidationError):
        assert key in outcome.detail
    else:
        assert isinstance(outcome, Criteria)


# --- flags -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, False),
        ("true", True),
        ("TRUE", True),
        ("True", True),
        ("1", True),
        ("false", False),
        ("FaLsE", False),
        ("0", False),
    ],
)
def test_flag_values(raw, expected):
    assert parse_flag("force", raw) is expected


@pytest.mark.parametrize("raw", ["", " ", "no", "yes", "2", "on", "off", "01", "true ", "-1"])
def test_other_flag_values_are_refused_naming_the_flag(raw):
    with pytest.raises(ValidationError) as caught:
        parse_flag("dryRun", raw)
    assert list(caught.value.detail) == ["dryRun"]


# --- formatting and ORDER BY -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (datetime(2026, 1, 1, tzinfo=UTC), "2026-01-01T00:00:00Z"),
        (datetime(2026, 1, 1, 0, 0, 0, 5, tzinfo=UTC), "2026-01-01T00:00:00.000005Z"),
        (datetime.fromisoformat("2026-01-01T03:00:00+03:00"), "2026-01-01T00:00:00Z"),
        (datetime(2026, 1, 1, 12, 0), "2026-01-01T12:00:00Z"),
        (datetime(5, 1, 1, tzinfo=UTC), "0005-01-01T00:00:00Z"),
    ],
)
def test_format_datetime(value, text):
    assert format_datetime(value) == text


def _order_sql(sort: str) -> list[str]:
    terms = parse_criteria({"sort": sort}).order_by()
    return [f"{term.expression.name} {'desc' if term.descending else 'asc'}" for term in terms]


@pytest.mark.parametrize(
    ("sort", "expected"),
    [
        (None, ["id asc"]),
        ("-id", ["id desc"]),
        ("date", ["converted_at asc", "id asc"]),
        ("-date", ["converted_at desc", "id desc"]),
        ("status,-payout", ["status asc", "payout desc", "id desc"]),
        ("-payout,status", ["payout desc", "status asc", "id asc"]),
        ("id,date", ["id asc", "converted_at asc"]),
        ("date,-id,status", ["converted_at asc", "id desc", "status asc"]),
        ("clickId", ["click_id asc", "id asc"]),
        ("conversionType", ["conversion_type_id asc", "id asc"]),
    ],
)
def test_order_by_ends_with_one_id_in_the_last_keys_direction(sort, expected):
    assert _order_sql(sort) == expected


def test_nullable_sort_columns_place_nulls_like_postgresql():
    # when
    ascending, _ = parse_criteria({"sort": "brandId"}).order_by()
    descending, _ = parse_criteria({"sort": "-trafficSourceId"}).order_by()

    # then
    assert ascending.nulls_last and not ascending.nulls_first
    assert descending.nulls_first and not descending.nulls_last


@pytest.mark.parametrize(
    "from_date, to_date",
    [
        ("2026-12-01T00:00:00.0000001Z", "2026-12-01T00:00:00.0000001Z"),
        ("2026-12-01T00:00:00.1234564Z", "2026-12-01T00:00:00.1234565Z"),
    ],
)
def test_equal_or_ordered_instants_finer_than_a_microsecond_are_not_after(from_date, to_date):
    criteria = parse_criteria({"fromDate": from_date, "toDate": to_date})

    assert criteria.from_date is not None and criteria.to_date is not None


def test_from_date_finer_than_a_microsecond_after_to_date_is_refused():
    with pytest.raises(ValidationError) as error:
        parse_criteria(
            {"fromDate": "2026-12-01T00:00:00.0000002Z", "toDate": "2026-12-01T00:00:00.0000001Z"}
        )

    assert "non_field_errors" in error.value.detail
