"""conversions.bulk and the plain conversion rows of the delivery path: the same rows on
every database (the suite runs on SQLite and PostgreSQL, so both the array/unnest/COPY
forms and the fallbacks are covered)."""

import uuid
from datetime import UTC, datetime

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from conversions.bulk import copy_rows, delete_claims, insert_claims, insert_run_items, text_array
from conversions.delivery.macros import macro_values
from conversions.models import (
    Affiliate,
    Conversion,
    DeliveryAttempt,
    DeliveryClaim,
    RetriggerRun,
    RunItem,
)
from conversions.recording import ATTEMPT_FIELDS
from conversions.skips import CONVERSION_FIELDS, conversion_rows
from tests.factories import make_account, make_affiliate, make_conversion, make_postback

WHEN = datetime(2026, 2, 1, 10, 30, tzinfo=UTC)


@pytest.fixture
def rows():
    affiliate = make_affiliate(make_account())
    postback = make_postback(affiliate, "http://127.0.0.1:9/pb?c={click_id}")
    conversions = [make_conversion(affiliate) for _ in range(3)]
    run = RetriggerRun.objects.create(actor="t", source="api", criteria={})
    other = RetriggerRun.objects.create(actor="o", source="api", criteria={})
    return affiliate, postback, conversions, run, other


@pytest.mark.django_db
def test_any_of_matches_like_in(rows):
    _, _, conversions, _, _ = rows
    ids = [c.pk for c in conversions]
    unknown = max(ids) + 10**6

    found = Conversion.objects.filter(id__any_of=[*ids[:2], unknown, None])

    assert sorted(c.pk for c in found) == sorted(ids[:2])
    # a large id (beyond 32 bits) against a bigint column
    assert not Conversion.objects.filter(id__any_of=[2**40]).exists()


@pytest.mark.django_db
def test_any_of_on_a_foreign_key_and_in_a_delete(rows):
    _, postback, conversions, run, _ = rows
    for c in conversions:
        DeliveryClaim.objects.create(conversion=c, postback=postback, run=run)

    deleted, _ = DeliveryClaim.objects.filter(
        run=run, conversion_id__any_of=[conversions[0].pk, conversions[2].pk]
    ).delete()

    assert deleted == 2
    assert list(DeliveryClaim.objects.values_list("conversion_id", flat=True)) == [
        conversions[1].pk
    ]


@pytest.mark.django_db
def test_any_of_an_empty_list_matches_nothing_without_a_query():
    with CaptureQueriesContext(connection) as queries:
        assert list(Conversion.objects.filter(id__any_of=[])) == []
    assert len(queries) == 0


@pytest.mark.django_db
def test_any_of_sends_one_array_parameter_on_postgresql(rows):
    _, _, conversions, _, _ = rows
    with CaptureQueriesContext(connection) as queries:
        list(Conversion.objects.filter(id__any_of=[c.pk for c in conversions]))
    [query] = queries.captured_queries
    if connection.vendor == "postgresql":
        assert "= ANY(" in query["sql"]
    else:
        assert " IN (" in query["sql"]


@pytest.mark.django_db
def test_insert_claims_keeps_pairs_claimed_already(rows):
    _, postback, conversions, run, other = rows
    DeliveryClaim.objects.create(conversion=conversions[0], postback=postback, run=other)
    pairs = [(c.pk, postback.pk) for c in conversions]

    first = insert_claims(DeliveryClaim, run_id=run.pk, pairs=pairs, claimed_at=WHEN)
    again = insert_claims(DeliveryClaim, run_id=run.pk, pairs=pairs, claimed_at=WHEN)

    if connection.vendor == "postgresql":  # it says which pairs this call claimed
        assert first == set(pairs[1:]) and again == set()
    else:
        assert first is None and again is None  # SQLite cannot tell; callers read back

    claims = {
        c: (r, at)
        for c, r, at in DeliveryClaim.objects.values_list("conversion_id", "run_id", "claimed_at")
    }
    assert len(claims) == 3
    assert claims[conversions[0].pk][0] == other.pk
    assert claims[conversions[1].pk] == (run.pk, WHEN)
    assert claims[conversions[2].pk] == (run.pk, WHEN)


@pytest.mark.django_db
def test_insert_claims_of_nothing_runs_no_query(rows):
    _, _, _, run, _ = rows
    with CaptureQueriesContext(connection) as queries:
        insert_claims(DeliveryClaim, run_id=run.pk, pairs=[], claimed_at=WHEN)
    assert len(queries) == 0


@pytest.mark.django_db
def test_insert_run_items_returns_only_the_new_ones(rows, monkeypatch):
    _, _, conversions, run, other = rows
    monkeypatch.setattr("conversions.bulk.BATCH_SIZE", 2)  # several statements
    RunItem.objects.create(run=run, conversion=conversions[1], outcome="failed")
    RunItem.objects.create(run=other, conversion=conversions[0], outcome="failed")
    items = [(c.pk, "delivered") for c in conversions]

    new = insert_run_items(RunItem, run_id=run.pk, items=items, created_at=WHEN)

    assert new == {conversions[0].pk, conversions[2].pk}
    stored = {
        c: (o, at)
        for c, o, at in RunItem.objects.filter(run=run).values_list(
            "conversion_id", "outcome", "created_at"
        )
    }
    assert stored == {
        conversions[0].pk: ("delivered", WHEN),
        conversions[1].pk: ("failed", stored[conversions[1].pk][1]),  # untouched
        conversions[2].pk: ("delivered", WHEN),
    }
    assert insert_run_items(RunItem, run_id=run.pk, items=items, created_at=WHEN) == set()
    assert insert_run_items(RunItem, run_id=run.pk, items=[], created_at=WHEN) == set()


@pytest.mark.django_db
def test_delete_claims_drops_only_the_runs_claims_on_those_conversions(rows):
    _, postback, conversions, run, other = rows
    for owner, conversion in [
        (run, conversions[0]),
        (run, conversions[1]),
        (other, conversions[2]),
    ]:
        DeliveryClaim.objects.create(run=owner, conversion=conversion, postback=postback)

    delete_claims(
        DeliveryClaim, run_id=run.pk, conversion_ids=[conversions[0].pk, conversions[2].pk]
    )
    delete_claims(DeliveryClaim, run_id=run.pk, conversion_ids=[])

    left = set(DeliveryClaim.objects.values_list("run_id", "conversion_id"))
    assert left == {(run.pk, conversions[1].pk), (other.pk, conversions[2].pk)}


@pytest.mark.parametrize("values", [[], ["delivered"], ['a"b', "c\\d", "{x,y}", "", "NULL"]])
@pytest.mark.django_db
def test_text_array_round_trips_through_postgresql(values):
    literal = text_array(values)
    assert literal.startswith("{") and literal.endswith("}")
    if connection.vendor == "postgresql":  # SQLite has no arrays; the literal is for PG
        with connection.cursor() as cursor:
            cursor.execute("SELECT %s::text[]", [literal])
            assert cursor.fetchone()[0] == values


@pytest.mark.django_db
def test_copy_rows_stores_every_value_as_given(rows):
    affiliate, postback, conversions, run, _ = rows
    event_id = str(uuid.uuid4())
    awkward = 'tab\there\nnew line \\ backslash "quote" \u00e9\u20ac'
    head = (run.pk, conversions[0].pk, postback.pk, affiliate.pk, event_id)
    values = [
        (*head, 1, "GET", "http://h/pb?x=1", None, "timeout", awkward, False, False, 0, "", WHEN),
        (*head, 2, "GET", "http://h/pb?x=1", 200, "", "", True, True, 12, awkward, WHEN),
    ]

    copy_rows(DeliveryAttempt, ATTEMPT_FIELDS, iter(values))

    stored = list(DeliveryAttempt.objects.order_by("attempt_number").values_list(*ATTEMPT_FIELDS))
    expected = [(*row[:4], uuid.UUID(event_id), *row[5:]) for row in values]
    assert stored == expected


@pytest.mark.django_db
def test_conversion_rows_read_like_the_models_for_planning_and_macros(rows):
    affiliate, _, conversions, _, _ = rows
    Affiliate.objects.filter(pk=affiliate.pk).update(is_active=False)
    ids = [c.pk for c in conversions]
    event_id = uuid.uuid4()

    loaded = conversion_rows([*ids, max(ids) + 10**6])
    models = Conversion.objects.select_related("affiliate", "conversion_type").in_bulk(ids)

    assert sorted(loaded) == sorted(ids)
    for pk, model in models.items():
        row = loaded[pk]
        assert row.pk == model.pk
        assert row.affiliate.is_active is False
        assert row.conversion_type.name == model.conversion_type.name
        assert all(getattr(row, name) == getattr(model, name) for name in CONVERSION_FIELDS)
        name = model.conversion_type.name
        assert macro_values(row, conversion_type_name=name, event_id=event_id) == macro_values(
            model, conversion_type_name=name, event_id=event_id
        )


@pytest.mark.django_db
def test_log_tables_still_cascade_without_database_foreign_keys(rows):
    # The bulk tables have no database-level foreign keys; Django's on_delete cascades.
    affiliate, postback, conversions, run, _ = rows
    gone, kept = conversions[0], conversions[1]
    for conversion in (gone, kept):
        DeliveryClaim.objects.create(run=run, conversion=conversion, postback=postback)
        RunItem.objects.create(run=run, conversion=conversion, outcome="delivered")
        DeliveryAttempt.objects.create(
            run=run, conversion=conversion, postback=postback, affiliate=affiliate,
            event_id=uuid.uuid4(), attempt_number=1, method="GET", url="http://x/",
            delivered=True, final=True, duration_ms=1,
        )  # fmt: skip

    gone.delete()

    for model in (DeliveryClaim, RunItem, DeliveryAttempt):
        assert set(model.objects.values_list("conversion_id", flat=True)) == {kept.pk}
    run.delete()
    for model in (DeliveryClaim, RunItem, DeliveryAttempt):
        assert not model.objects.exists()
