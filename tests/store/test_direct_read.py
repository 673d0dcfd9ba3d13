"""`store.direct_read`: a prebuilt SELECT on a pooled DBAPI connection, on both databases."""

from __future__ import annotations

import pytest
from sqlalchemy import bindparam, func, select, text

from store.db import Database
from store.direct_read import DirectRead
from store.items import ItemInput, upsert_items
from store.models import Item

_ITEM = select(Item.id, Item.title, Item.categories, Item.properties).where(
    Item.external_id == bindparam("external_id")
)
_TITLES = select(func.aggregate_strings(Item.title, "|")).where(Item.id > bindparam("after"))


def test_rows_match_what_sqlalchemy_reads(db: Database) -> None:
    with db.write() as session:
        upsert_items(
            session,
            [ItemInput("a", "Alpha", categories=["x", "y"], properties={"year": 1999})],
        )
    read = DirectRead(_ITEM, "external_id")
    with db.read() as session:
        expected = session.execute(_ITEM, {"external_id": "a"}).one()
    for _ in range(2):  # the second run uses the processors the first one made
        row = read.first(db, {"external_id": "a"})
        assert tuple(row) == tuple(expected)
        assert (row.title, row.categories, row.properties) == ("Alpha", ["x", "y"], {"year": 1999})
    assert read.first(db, {"external_id": "missing"}) is None


def test_literal_execute_values_are_rendered_and_parameters_bound(db: Database) -> None:
    with db.write() as session:
        upsert_items(session, [ItemInput(f"i{n}", f"T{n}") for n in range(3)])
    read = DirectRead(_TITLES, "after")
    assert sorted(read.first(db, {"after": 0})[0].split("|")) == ["T0", "T1", "T2"]
    assert read.first(db, {"after": 10**9})[0] is None


def test_a_failed_read_leaves_the_pool_usable_and_no_transaction_open(db: Database) -> None:
    read = DirectRead(select(text("1 / CAST(:zero AS INTEGER)")), "zero")
    if db.dialect == "postgresql":
        with pytest.raises(Exception, match="division by zero"):
            read.first(db, {"zero": "0"})
    assert read.first(db, {"zero": "1"})[0] == 1
    connection = db.engine.raw_connection()
    try:
        if db.dialect == "postgresql":
            assert connection.dbapi_connection.info.transaction_status.name == "IDLE"
        else:
            assert not connection.dbapi_connection.in_transaction
    finally:
        connection.close()


def test_a_failed_read_raises_sqlalchemys_error_and_invalidates_its_connection(
    db: Database,
) -> None:
    """The pool's reset on return would hide a missing ``invalidate()`` from the test above: a
    connection whose read failed (on PostgreSQL, inside an aborted transaction) must not go
    back into the pool."""
    from sqlalchemy import event
    from sqlalchemy.exc import DBAPIError

    invalidated: list[object] = []

    def record(dbapi_connection: object, *_: object) -> None:
        invalidated.append(dbapi_connection)

    event.listen(db.engine, "invalidate", record)
    try:
        read = DirectRead(select(text("missing_column")).select_from(text("missing_table")))
        with pytest.raises(DBAPIError):
            read.first(db, {})
        assert len(invalidated) == 1
        assert DirectRead(select(text("1"))).first(db, {})[0] == 1  # the pool serves on
    finally:
        event.remove(db.engine, "invalidate", record)
