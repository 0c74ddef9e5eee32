"""The delivery path's bulk statements: a PostgreSQL form and a portable fallback.

Everything vendor-specific in SQL lives here. On PostgreSQL:

- an id list travels as one array parameter, `col = ANY(%s::bigint[])` (the `any_of`
  lookup), instead of one bound parameter per id: with client-side binding every
  placeholder of a long `IN (%s, %s, ...)` is split, adapted and quoted in Python;
- claims and run items go in as `INSERT ... SELECT ... FROM unnest(...) ON CONFLICT DO
  NOTHING`, built from plain tuples, without a model instance per row;
- attempts go in through `COPY ... FROM STDIN`.

Elsewhere (SQLite in development and tests) the same calls fall back to `IN (...)` and
`bulk_create`, with the same rows as a result.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from django.core.exceptions import EmptyResultSet
from django.db import connection
from django.db.models import Lookup, Model

BATCH_SIZE = 500


def is_postgresql() -> bool:
    return connection.vendor == "postgresql"


def text_array(values: Iterable[str]) -> str:
    """A PostgreSQL array literal of strings, each quoted and escaped: one parameter."""
    quoted = ('"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"' for value in values)
    return "{" + ",".join(quoted) + "}"


def int_array(values: Iterable[int]) -> str:
    """PostgreSQL's text form of an integer array, `{1,2,3}`, for a `%s::bigint[]`
    parameter: joined in one go instead of psycopg adapting it element by element."""
    return "{" + ",".join(map(str, map(int, values))) + "}"


class AnyOf(Lookup):
    """`field__any_of=ids`: `IN` over a list of ids, sent as one array on PostgreSQL.

    The ids are integers, used without per-value preparation; `None` never matches
    and an empty list matches nothing without a query, as with `__in`.
    """

    lookup_name = "any_of"
    prepare_rhs = False

    def get_prep_lookup(self):
        return [value for value in self.rhs if value is not None]

    def as_sql(self, compiler, connection):
        if not self.rhs:
            raise EmptyResultSet
        lhs, lhs_params = self.process_lhs(compiler, connection)
        if connection.vendor == "postgresql":
            db_type = self.lhs.output_field.cast_db_type(connection)
            return f"{lhs} = ANY(%s::{db_type}[])", (*lhs_params, int_array(self.rhs))
        placeholders = ", ".join(["%s"] * len(self.rhs))
        return f"{lhs} IN ({placeholders})", (*lhs_params, *self.rhs)


def register_any_of(*fields: tuple[type[Model], str]) -> None:
    """Make `any_of` available on the given (model, field name) pairs."""
    for model, name in fields:
        model._meta.get_field(name).register_lookup(AnyOf)


def _column(model: type[Model], name: str) -> str:
    return connection.ops.quote_name(model._meta.get_field(name).column)


def _cast(model: type[Model], name: str) -> str:
    return model._meta.get_field(name).cast_db_type(connection)


def insert_claims(
    model: type[Model], *, run_id: int, pairs: Sequence[tuple[int, int]], claimed_at: datetime
) -> set[tuple[int, int]] | None:
    """Claim (conversion_id, postback_id) pairs for a run; pairs claimed already are
    left as they are (whoever holds them). Returns the pairs this call claimed, or None
    where the database cannot tell (SQLite)."""
    if not pairs:
        return set()
    if not is_postgresql():
        model.objects.bulk_create(
            [
                model(conversion_id=c, postback_id=p, run_id=run_id, claimed_at=claimed_at)
                for c, p in pairs
            ],
            ignore_conflicts=True,
            batch_size=BATCH_SIZE,
        )
        return None
    # Identifiers from the model's metadata, quoted; every value is a parameter.
    sql = (
        f"INSERT INTO {connection.ops.quote_name(model._meta.db_table)} "  # noqa: S608
        f"({_column(model, 'conversion')}, {_column(model, 'postback')}, "
        f"{_column(model, 'run')}, {_column(model, 'claimed_at')}) "
        f"SELECT c, p, %s, %s FROM unnest(%s::{_cast(model, 'conversion')}[], "
        f"%s::{_cast(model, 'postback')}[]) AS u(c, p) "
        f"ON CONFLICT DO NOTHING RETURNING {_column(model, 'conversion')}, "
        f"{_column(model, 'postback')}"
    )
    claimed: set[tuple[int, int]] = set()
    with connection.cursor() as cursor:
        for start in range(0, len(pairs), BATCH_SIZE):
            batch = pairs[start : start + BATCH_SIZE]
            conversions = int_array(c for c, _ in batch)
            postbacks = int_array(p for _, p in batch)
            cursor.execute(sql, [run_id, claimed_at, conversions, postbacks])
            claimed.update(cursor.fetchall())
    return claimed


def insert_run_items(
    model: type[Model], *, run_id: int, items: Sequence[tuple[int, str]], created_at: datetime
) -> set[int]:
    """Count (conversion_id, outcome) items in a run, skipping conversions the run counted
    already; returns the conversion ids that were new."""
    if not items:
        return set()
    if not is_postgresql():
        ids = [conversion_id for conversion_id, _ in items]
        counted = set(
            model.objects.filter(run_id=run_id, conversion_id__any_of=ids).values_list(
                "conversion_id", flat=True
            )
        )
        new = [item for item in items if item[0] not in counted]
        model.objects.bulk_create(
            [
                model(run_id=run_id, conversion_id=c, outcome=o, created_at=created_at)
                for c, o in new
            ],
            batch_size=BATCH_SIZE,
        )
        return {c for c, _ in new}
    conversion = _column(model, "conversion")
    sql = (
        f"INSERT INTO {connection.ops.quote_name(model._meta.db_table)} "  # noqa: S608
        f"({_column(model, 'run')}, {conversion}, {_column(model, 'outcome')}, "
        f"{_column(model, 'created_at')}) "
        f"SELECT %s, c, o, %s FROM unnest(%s::{_cast(model, 'conversion')}[], %s::text[]) "
        f"AS u(c, o) ON CONFLICT DO NOTHING RETURNING {conversion}"
    )
    new: set[int] = set()
    with connection.cursor() as cursor:
        for start in range(0, len(items), BATCH_SIZE):
            batch = items[start : start + BATCH_SIZE]
            cursor.execute(
                sql,
                [
                    run_id,
                    created_at,
                    int_array(c for c, _ in batch),
                    text_array(o for _, o in batch),
                ],
            )
            new.update(row[0] for row in cursor.fetchall())
    return new


def delete_claims(model: type[Model], *, run_id: int, conversion_ids: Sequence[int]) -> None:
    """Drop a run's claims on these conversions (one statement, no delete collector)."""
    if not conversion_ids:
        return
    if not is_postgresql():
        model.objects.filter(run_id=run_id, conversion_id__any_of=conversion_ids).delete()
        return
    sql = (
        f"DELETE FROM {connection.ops.quote_name(model._meta.db_table)} "  # noqa: S608
        f"WHERE {_column(model, 'run')} = %s "
        f"AND {_column(model, 'conversion')} = ANY(%s::{_cast(model, 'conversion')}[])"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [run_id, int_array(conversion_ids)])


def copy_rows(model: type[Model], fields: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Insert rows of plain values, in the order of `fields` (attribute names).

    PostgreSQL: one `COPY ... FROM STDIN` (psycopg 3). COPY does not pass through
    Django's execute wrappers, so statement counters do not see it.
    """
    if not is_postgresql():
        model.objects.bulk_create(
            [model(**dict(zip(fields, row, strict=True))) for row in rows],
            batch_size=BATCH_SIZE,
        )
        return
    columns = ", ".join(_column(model, name) for name in fields)
    table = connection.ops.quote_name(model._meta.db_table)
    with connection.cursor() as cursor, cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def add_to_run(
    model: type[Model], *, run_id: int, increments: dict[str, int], heartbeat_at: datetime
) -> bool:
    """Add to a run's counters and beat its heartbeat; returns its `cancel_requested`.

    One `UPDATE ... RETURNING` (PostgreSQL, and SQLite since 3.35) instead of an update
    and a read: workers do this several times a second.
    """
    assignments = [f"{_column(model, 'heartbeat_at')} = %s"]
    params: list[Any] = [connection.ops.adapt_datetimefield_value(heartbeat_at)]
    for name, value in increments.items():
        column = _column(model, name)
        assignments.append(f"{column} = {column} + %s")
        params.append(value)
    sql = (
        f"UPDATE {connection.ops.quote_name(model._meta.db_table)} "  # noqa: S608
        f"SET {', '.join(assignments)} WHERE {_column(model, 'id')} = %s "
        f"RETURNING {_column(model, 'cancel_requested')}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, run_id])
        row = cursor.fetchone()
    return bool(row and row[0])
