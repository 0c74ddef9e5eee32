"""What the criteria select on real rows, scoped to the actor, ordered and paged."""

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import cmp_to_key

import pytest

from conversions.access import COMMAND_LINE_ACTOR, AccountForbidden, Actor
from conversions.criteria import parse_criteria
from conversions.models import Conversion
from conversions.selectors import check_account_scope, conversion_list, conversion_selection
from tests.factories import (
    make_account,
    make_affiliate,
    make_brand,
    make_conversion,
    make_conversion_type,
    make_traffic_source,
)

pytestmark = pytest.mark.django_db

CLICK = uuid.UUID("9b2f0c1e-1111-4a4a-8b8b-000000000001")


def at(day: int, hour: int = 12, *, micro: int = 0) -> datetime:
    return datetime(2026, 2, day, hour, tzinfo=UTC) + timedelta(microseconds=micro)


def restricted(*account_ids: int) -> Actor:
    return Actor(user=None, label="admin", admin_account_ids=frozenset(account_ids))


def ids_of(queryset) -> list[int]:
    return list(queryset.values_list("id", flat=True))


@pytest.fixture
def world():
    """Two accounts; each conversion differs from `base` in exactly one attribute."""
    a, b = make_account(id=1), make_account(id=2)
    aff_a, aff_a2, aff_b = (
        make_affiliate(a, id=10),
        make_affiliate(a, id=11),
        make_affiliate(b, id=20),
    )
    sale, deposit = make_conversion_type("sale", id=1), make_conversion_type("deposit", id=2)
    brand, source = make_brand(a, id=100), make_traffic_source(a, id=200)
    common = {
        "conversion_type": sale,
        "converted_at": at(15),
        "created_at": at(1),
        "updated_at": at(1),
    }
    rows = {
        "base": make_conversion(aff_a, id=1, **common),
        "other_affiliate": make_conversion(aff_a2, id=2, **common),
        "other_account": make_conversion(aff_b, id=3, **common),
        "clicked": make_conversion(aff_a, id=4, **{**common, "click_id": CLICK}),
        "deposit": make_conversion(aff_a, id=5, **{**common, "conversion_type": deposit}),
        "branded": make_conversion(aff_a, id=6, brand=brand, **common),
        "sourced": make_conversion(aff_a, id=7, traffic_source=source, **common),
        "early": make_conversion(aff_a, id=8, **{**common, "converted_at": at(14, 23)}),
        "day_end": make_conversion(
            aff_a, id=9, **{**common, "converted_at": at(16, 0) - timedelta(microseconds=1)}
        ),
        "next_day": make_conversion(aff_a, id=10, **{**common, "converted_at": at(16, 0)}),
        "updated": make_conversion(aff_a, id=11, **{**common, "updated_at": at(3)}),
        "created": make_conversion(aff_a, id=12, **{**common, "created_at": at(3)}),
    }
    return {name: row.id for name, row in rows.items()}


def select(body: dict, actor: Actor = COMMAND_LINE_ACTOR) -> list[int]:
    return ids_of(conversion_list(criteria=parse_criteria(body), actor=actor))


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"id": [1, 3, 999]}, {"base", "other_account"}),
        ({"affiliateId": [11]}, {"other_affiliate"}),
        ({"accountId": [2]}, {"other_account"}),
        ({"clickIds": [str(CLICK)]}, {"clicked"}),
        ({"clickIds": [str(CLICK).upper()]}, {"clicked"}),
        ({"conversionTypes": [2]}, {"deposit"}),
        ({"brandIds": [100]}, {"branded"}),
        ({"trafficSourceId": [200]}, {"sourced"}),
        ({"fromDate": "2026-02-16"}, {"next_day"}),
        ({"fromDate": "2026-02-15T23:59:59.999999Z"}, {"day_end", "next_day"}),
        ({"toDate": "2026-02-14"}, {"early"}),
        ({"toDate": "2026-02-14T23:00:00+01:00"}, set()),
        ({"fromDate": "2026-02-15T12:00:00Z", "toDate": "2026-02-15T12:00:00Z"}, "at_noon"),
        ({"updatedSince": "2026-02-02"}, {"updated"}),
        ({"updatedSince": "2026-02-03T12:00:00Z"}, set()),
        ({"createdFrom": "2026-02-03T12:00:00Z"}, {"created"}),
        ({"affiliateId": [10], "brandIds": [100]}, {"branded"}),
        ({"affiliateId": None, "brandIds": [100]}, {"branded"}),
        ({"affiliateId": []}, set()),
        ({"clickIds": []}, set()),
    ],
)
def test_each_criterion_filters(world, body, expected):
    # given
    if expected == "at_noon":
        expected = {name for name in world if name not in {"early", "day_end", "next_day"}}

    # when
    selected = select(body)

    # then
    assert set(selected) == {world[name] for name in expected}


def test_a_date_only_to_date_covers_its_whole_day(world):
    # when
    selected = set(select({"toDate": "2026-02-15"}))

    # then
    assert world["day_end"] in selected
    assert world["next_day"] not in selected


def test_no_criteria_selects_everything_for_an_unrestricted_actor(world):
    assert set(select({})) == set(world.values())


def test_a_restricted_actor_only_ever_sees_their_accounts(world):
    # when
    everything = select({}, restricted(1))
    by_id = select({"id": [world["other_account"], world["base"]]}, restricted(1))

    # then
    assert world["other_account"] not in everything
    assert set(everything) == set(world.values()) - {world["other_account"]}
    assert by_id == [world["base"]]


def test_an_actor_without_accounts_sees_nothing(world):
    assert select({}, restricted()) == []


def test_check_account_scope_refuses_foreign_accounts_naming_them():
    # when
    with pytest.raises(AccountForbidden) as caught:
        check_account_scope(parse_criteria({"accountId": [1, 2, 3]}), restricted(1))

    # then
    assert caught.value.account_ids == [2, 3]


@pytest.mark.parametrize(
    ("body", "actor"),
    [
        ({"accountId": [1]}, restricted(1, 2)),
        ({}, restricted(1)),
        ({"accountId": None}, restricted(1)),
        ({"accountId": [424242]}, COMMAND_LINE_ACTOR),
    ],
)
def test_check_account_scope_allows_own_and_unrestricted(body, actor):
    # when / then: no exception
    assert check_account_scope(parse_criteria(body), actor) is None


def test_the_selection_is_the_offset_limit_window(world):
    # given
    criteria = parse_criteria({"offset": 2, "limit": 3})

    # when
    window = ids_of(conversion_selection(criteria=criteria, actor=COMMAND_LINE_ACTOR))

    # then
    assert window == sorted(world.values())[2:5]


@pytest.fixture
def crowd():
    """Many ties in every sort column, ids out of insertion order, some NULL brands."""
    account = make_account(id=3)
    affiliates = [make_affiliate(account, id=30 + n) for n in range(3)]
    brands = [make_brand(account, id=300 + n) for n in range(2)]
    source = make_traffic_source(account, id=400)
    types = [make_conversion_type("sale", id=1), make_conversion_type("lead", id=3)]
    for n in range(37):
        pk = (n * 17) % 37 + 1
        make_conversion(
            affiliates[n % 3],
            id=pk,
            brand=brands[n % 2] if n % 5 else None,
            traffic_source=source if n % 3 == 1 else None,
            conversion_type=types[n % 2],
            status=["approved", "pending", "rejected"][n % 3],
            payout=Decimal(n % 4),
            converted_at=at(1 + n % 3),
            created_at=at(1 + n % 2),
            updated_at=at(1 + n % 4),
            click_id=uuid.UUID(int=n % 6),
        )


SORT_KEYS = {
    "id": lambda c: c.id,
    "date": lambda c: c.converted_at,
    "createdAt": lambda c: c.created_at,
    "updatedAt": lambda c: c.updated_at,
    "affiliateId": lambda c: c.affiliate_id,
    "accountId": lambda c: c.account_id,
    "brandId": lambda c: c.brand_id,
    "trafficSourceId": lambda c: c.traffic_source_id,
    "conversionType": lambda c: c.conversion_type_id,
    "clickId": lambda c: c.click_id,
    "payout": lambda c: c.payout,
    "status": lambda c: c.status,
}


def expected_order(sort: str) -> list[int]:
    """The contract's order computed in Python: NULLs last ascending, id tie-breaker."""
    keys = sort.split(",")
    if "id" not in [key.lstrip("-") for key in keys]:
        keys.append(("-" if keys[-1].startswith("-") else "") + "id")

    def compare(left: Conversion, right: Conversion) -> int:
        for key in keys:
            getter = SORT_KEYS[key.lstrip("-")]
            result = _compare_nulls_last(getter(left), getter(right))
            if result:
                return -result if key.startswith("-") else result
        return 0

    return [c.id for c in sorted(Conversion.objects.all(), key=cmp_to_key(compare))]


def _compare_nulls_last(a, b) -> int:
    if a is None or b is None:
        return (a is None) - (b is None)
    return (a > b) - (a < b)


@pytest.mark.parametrize(
    "sort",
    [
        "id",
        "-id",
        "-date",
        "date,-payout",
        "status,-brandId",
        "-brandId",
        "brandId",
        "-trafficSourceId,affiliateId",
        "trafficSourceId",
        "createdAt,-updatedAt",
        "clickId,-conversionType",
        "accountId,-status,payout",
    ],
)
@pytest.mark.parametrize("page_size", [1, 4, 10])
def test_paging_with_any_sort_never_repeats_or_skips(crowd, sort, page_size):
    # given
    full = select({"sort": sort, "limit": 1000})

    # when
    pages: list[int] = []
    for offset in range(0, 40, page_size):
        criteria = parse_criteria({"sort": sort, "offset": offset, "limit": page_size})
        pages += ids_of(conversion_selection(criteria=criteria, actor=COMMAND_LINE_ACTOR))

    # then
    assert pages == full
    assert sorted(pages) == list(range(1, 38))
    assert full == expected_order(sort)
