"""Dialect-specific statements behind one portable function."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Select, Table, any_, bindparam, column, func, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from store.direct_read import DirectRead, DirectWrite, execute_driver_sql


def insert_ignoring_conflicts(
    session: Session,
    table: Table,
    rows: Sequence[dict[str, Any]],
    conflict_column: str,
    returning: Sequence[str] = (),
) -> list[Any]:
    """INSERT ... ON CONFLICT (conflict_column) DO NOTHING; return the inserted rows' columns.

    On the Session's DBAPI connection (`store.direct_read`): a user's first event inserts a user
    and a profile row, and SQLAlchemy's per-execution work cost more than the insert; bulk
    imports insert thousands, which SQLAlchemy sent as multi-VALUES statements that psycopg then
    parsed in Python. Rows come back from psycopg's pipelined executemany on PostgreSQL; on
    SQLite (whose driver's executemany returns none) from the rows themselves where they hold
    the columns asked for (`_insert_new_sqlite`), else from one execute per row.
    """
    if not rows:
        return []
    dialect = session.get_bind().dialect.name
    columns = tuple(rows[0])
    if dialect == "sqlite" and len(rows) > 1 and set(returning) <= set(columns):
        return _insert_new_sqlite(session, table, rows, columns, conflict_column, returning)
    if dialect == "postgresql" and len(rows) > 1 and not returning:
        # One statement for them all (a bulk import's first batch creates thousands of users:
        # 5,000 in 0.08-0.16 s against 0.22-0.30 s as a pipelined INSERT each).
        insert_unnest(session, table, rows, conflict_column)
        return []
    write = _direct_insert(dialect, table, columns, conflict_column, tuple(returning))
    if not returning:
        write.executemany(session, rows)
        return []
    if dialect == "postgresql" and len(rows) > 1:
        return write.executemany_returning(session, rows)
    return [back for row in rows for back in write.execute(session, row)]


def insert_unnest(
    session: Session,
    table: Table,
    rows: Sequence[dict[str, Any]],
    conflict_column: str | None = None,
) -> None:
    """PostgreSQL: ``rows`` (all with the same columns) as one INSERT ... SELECT FROM unnest of
    the columns as arrays (psycopg's binary format: as text, dumping them cost 3-4x the CPU,
    see `store.events`), the values bound as SQLAlchemy would bind them, in the rows' order
    (so writers inserting keys in one order cannot deadlock); with ``conflict_column``, rows
    whose key is stored are skipped (ON CONFLICT DO NOTHING)."""
    dialect = session.get_bind().dialect
    quote = dialect.identifier_preparer.quote
    names = list(rows[0])
    arrays, casts = {}, []
    for name in names:
        column_type = table.c[name].type
        values = [row[name] for row in rows]
        bind = column_type.bind_processor(dialect)
        arrays[name] = values if bind is None else list(map(bind, values))
        casts.append(f"CAST(%({name})b AS {column_type.compile(dialect=dialect)}[])")
    columns = ", ".join(quote(name) for name in names)
    conflict = (
        "" if conflict_column is None else f" ON CONFLICT ({quote(conflict_column)}) DO NOTHING"
    )
    execute_driver_sql(
        session,
        f"INSERT INTO {quote(table.name)} ({columns}) SELECT * FROM unnest({', '.join(casts)})"
        + conflict,
        arrays,
    )


def _insert_new_sqlite(
    session: Session,
    table: Table,
    rows: Sequence[dict[str, Any]],
    columns: tuple[str, ...],
    conflict_column: str,
    returning: Sequence[str],
) -> list[Any]:
    """The rows whose key is not stored yet (the first of each key), found with one query and
    inserted with one executemany; their ``returning`` columns. An import's 10,000 new profiles
    took 0.5 s of CPU as one execute each.

    Exact because SQLite has one writer at a time: between the query and the insert no other
    connection can add a key (a write transaction holds the lock from its BEGIN IMMEDIATE; a
    deferred one whose snapshot went stale fails on its write instead, and is retried).
    """
    stored = {
        key
        for (key,) in _stored_keys(table, conflict_column).all_in(
            session, {"keys": bound_list((row[conflict_column] for row in rows), "sqlite")}
        )
    }
    new: dict[Any, dict[str, Any]] = {}
    for row in rows:
        if row[conflict_column] not in stored:
            new.setdefault(row[conflict_column], row)
    if new:
        write = _direct_insert("sqlite", table, columns, conflict_column, ())
        write.executemany(session, list(new.values()))
    return [tuple(row[name] for name in returning) for row in new.values()]


@functools.cache
def _stored_keys(table: Table, column_name: str) -> DirectRead:
    key = table.c[column_name]
    return DirectRead(select(key).where(in_bound_list(key, "keys", "sqlite")), "keys")


def in_list(column: ColumnElement[Any], name: str, dialect: str) -> ColumnElement[bool]:
    """``column IN (:name)``: one array parameter on PostgreSQL (``= ANY``), where thousands of
    separate parameters cost more to bind and plan than the lookup; SQLAlchemy's expanding
    parameter on SQLite."""
    if dialect == "postgresql":
        return column == any_(bindparam(name, type_=ARRAY(column.type)))
    return column.in_(bindparam(name, expanding=True))


def in_bound_list(column_: ColumnElement[Any], name: str, dialect: str) -> ColumnElement[bool]:
    """``column IN`` a list bound as one parameter whatever its length (pass the value
    through `bound_list`): an array on PostgreSQL (``= ANY``), JSON text on SQLite
    (``json_each``). The statement's text does not change with the count, so a
    `store.direct_read` statement compiles it once (an expanding IN changes with it)."""
    if dialect == "postgresql":
        return in_list(column_, name, dialect)
    return column_.in_(select(column("value")).select_from(func.json_each(bindparam(name))))


def covering_select(
    table: Table, index: str, key: str, *names: str, param: str, dialect: str
) -> Select[Any]:
    """``key`` and ``names`` of ``table``'s rows whose ``key`` is in the bound list ``param``.
    On SQLite from the covering index ``index``, named (``INDEXED BY``): its planner would
    rather read the rows by their key, which for wide rows (vectors, 9 KB profiles) reads
    what the index was made to avoid."""
    if dialect == "sqlite":
        columns = [column(name, table.c[name].type) for name in (key, *names)]
        source = text(f"{table.name} INDEXED BY {index}")
        return select(*columns).select_from(source).where(in_bound_list(columns[0], param, dialect))
    wanted = in_bound_list(table.c[key], param, dialect)
    return select(table.c[key], *(table.c[name] for name in names)).where(wanted)


def bound_list(values: Iterable[Any], dialect: str) -> Any:
    """The parameter value of an `in_bound_list` condition."""
    values = list(values)
    return values if dialect == "postgresql" else json.dumps(values)


@functools.cache
def _direct_insert(
    dialect: str,
    table: Table,
    columns: tuple[str, ...],
    conflict_column: str,
    returning: tuple[str, ...],
) -> DirectWrite:
    module = postgresql if dialect == "postgresql" else sqlite
    stmt = (
        module.insert(table)
        .values({name: bindparam(name) for name in columns})
        .on_conflict_do_nothing(index_elements=[conflict_column])
    )
    if returning:
        stmt = stmt.returning(*(table.c[name] for name in returning))
    return DirectWrite(stmt, *columns)
