"""`store.direct_read`: prebuilt statements on a pooled DBAPI connection or a Session's own, on
both databases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import Float, bindparam, func, literal_column, select, text, update

from store.db import Database
from store.direct_read import DirectRead, DirectWrite
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


def test_binary_rows_match_what_sqlalchemy_reads(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``binary=True`` (PostgreSQL's binary format, for the reads of bytea columns): the
    column types of those reads (bytea, JSON, text, integers, floats, an aware timestamp, NULL,
    an integer literal) come as SQLAlchemy reads them, and on PostgreSQL the reads do ask for
    binary rows (else the rows above would match all the same)."""
    vector = bytes(range(256)) * 6
    with db.write() as session:
        upsert_items(session, [ItemInput("a", "Alpha", categories=["x"], properties={"n": 1})])
        session.execute(
            update(Item)
            .where(Item.external_id == "a")
            .values(vector=vector, vector_dim=384, deleted_at=datetime(2026, 1, 2, tzinfo=UTC))
        )
    statement = select(
        Item.id,
        Item.title,
        Item.categories,
        Item.vector,
        Item.vector_dim,
        Item.deleted_at,
        Item.expires_at,
        Item.text,
        func.cast(Item.id, Float).label("as_float"),
        literal_column("1").label("part"),
    ).where(Item.external_id == bindparam("external_id"))
    with db.read() as session:
        expected = session.execute(statement, {"external_id": "a"}).one()
    binary_cursors = _count_binary_cursors(monkeypatch) if db.dialect == "postgresql" else None
    read = DirectRead(statement, "external_id", binary=True)
    for _ in range(2):
        row = read.first(db, {"external_id": "a"})
        assert tuple(row) == tuple(expected)
        assert row.vector == vector and row.deleted_at == datetime(2026, 1, 2, tzinfo=UTC)
    with db.write() as session:
        assert tuple(read.all_in(session, {"external_id": "a"})[0]) == tuple(expected)
    if binary_cursors is not None:
        assert len(binary_cursors) == 3  # two `first`, one `all_in`


def _count_binary_cursors(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """psycopg cursors made in the binary format from now on (one entry each)."""
    import psycopg

    made: list[object] = []
    cursor = psycopg.Connection.cursor

    def recording(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        new = cursor(self, *args, **kwargs)
        if new.format == psycopg.pq.Format.BINARY:
            made.append(new)
        return new

    monkeypatch.setattr(psycopg.Connection, "cursor", recording)
    return made


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


def test_a_read_on_postgresql_is_its_own_transaction(postgres_url: str) -> None:
    """No BEGIN before the statement (two round trips fewer): PostgreSQL's transaction time
    is then the statement's own start; after a BEGIN sent apart it would be earlier. The
    connection goes back to the pool as Sessions expect it: their transactions stay whole."""
    db = Database(postgres_url)
    try:
        own = DirectRead(select((func.now() == func.statement_timestamp()).label("own")))
        assert own.first(db, {}).own is True
        with db.read() as session:  # a Session's statements still run inside a transaction
            session.execute(text("SELECT pg_sleep(0.01)"))
            assert (
                session.execute(select(func.now() == func.statement_timestamp())).scalar() is False
            )
        with pytest.raises(RuntimeError), db.write() as session:
            upsert_items(session, [ItemInput("rolled-back", "Gone")])
            raise RuntimeError
        assert DirectRead(_ITEM, "external_id").first(db, {"external_id": "rolled-back"}) is None
    finally:
        db.dispose()


def test_a_failed_read_raises_sqlalchemys_error_and_keeps_its_idle_connection(
    db: Database,
) -> None:
    """A statement that fails on its own leaves its connection idle (on PostgreSQL it ran in
    autocommit, so no transaction was aborted): the connection goes back into the pool as the
    pool's other users expect it (autocommit off) and serves the next read; one in any other
    state is invalidated (`test_a_read_on_a_dropped_connection_invalidates_it`)."""
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
        assert invalidated == []
        assert DirectRead(select(text("1"))).first(db, {})[0] == 1  # the pool serves on
        connection = db.engine.raw_connection()
        try:
            if db.dialect == "postgresql":
                assert connection.driver_connection.autocommit is False
        finally:
            connection.close()
    finally:
        event.remove(db.engine, "invalidate", record)


def test_a_read_on_a_dropped_connection_invalidates_it(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A connection the server drops during the statement is closed: invalidated before it
    goes back, not handed to the pool's reset (which would fail on it, log an error with a
    traceback and invalidate it only then)."""
    import logging

    from sqlalchemy import event
    from sqlalchemy.exc import DBAPIError

    db = Database(postgres_url)
    invalidated: list[object] = []

    def record(dbapi_connection: object, *_: object) -> None:
        invalidated.append(dbapi_connection)

    event.listen(db.engine, "invalidate", record)
    try:
        with pytest.raises(DBAPIError):
            DirectRead(select(func.pg_terminate_backend(func.pg_backend_pid()))).first(db, {})
        assert len(invalidated) == 1
        pool_errors = [
            r
            for r in caplog.records
            if r.name.startswith("sqlalchemy.pool") and r.levelno >= logging.ERROR
        ]
        assert pool_errors == []
        assert DirectRead(select(text("1"))).first(db, {})[0] == 1  # a new connection serves
    finally:
        event.remove(db.engine, "invalidate", record)
        db.dispose()


_TOUCH = DirectWrite(
    update(Item.__table__)
    .where(Item.__table__.c.external_id == bindparam("item"))
    .values(
        deleted_at=bindparam("deleted_at"),
        updated_at=bindparam("deleted_at"),
        revision=Item.__table__.c.revision + 1,
    ),
    "item",
    "deleted_at",
)
_NAMED = DirectRead(
    select(Item.__table__.c.external_id, Item.__table__.c.deleted_at).where(
        Item.__table__.c.external_id.like(bindparam("pattern"))
    ),
    "pattern",
)


def test_writes_in_a_transaction_store_what_sqlalchemy_would(db: Database) -> None:
    """`DirectWrite.executemany` and `DirectRead.all_in` on a write Session's connection: the
    rows changed, a datetime bound as the column stores it (SQLite's text, read back by
    SQLAlchemy as the same aware value), the transaction's own writes visible to its reads,
    and nothing kept when the transaction rolls back."""
    with db.write() as session:
        upsert_items(session, [ItemInput(f"w{n}", f"T{n}") for n in range(3)])
    when = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=timezone(timedelta(hours=2)))
    with db.write() as session:
        changed = _TOUCH.executemany(
            session, [{"item": "w0", "deleted_at": when}, {"item": "w2", "deleted_at": when}]
        )
        assert changed == 2
        seen = {
            row.external_id: row.deleted_at for row in _NAMED.all_in(session, {"pattern": "w%"})
        }
        assert seen["w0"] is not None and seen["w1"] is None
    with db.read() as session:
        stored = {i.external_id: i for i in session.scalars(select(Item))}
    assert stored["w0"].deleted_at == when == stored["w2"].deleted_at
    assert stored["w1"].deleted_at is None
    assert stored["w0"].revision == stored["w1"].revision + 1
    with pytest.raises(RuntimeError), db.write() as session:
        _TOUCH.executemany(session, [{"item": "w1", "deleted_at": when}])
        raise RuntimeError("roll back")
    with db.read() as session:
        assert session.scalar(select(Item.deleted_at).where(Item.external_id == "w1")) is None


def test_a_failed_write_raises_sqlalchemys_error(db: Database) -> None:
    """A driver error (here a unique violation) comes as SQLAlchemy's class, which run_write's
    retries and the service's error handlers know."""
    from sqlalchemy.exc import IntegrityError

    with db.write() as session:
        upsert_items(session, [ItemInput("x", "X"), ItemInput("y", "Y")])
    rename = DirectWrite(
        update(Item.__table__)
        .where(Item.__table__.c.external_id == bindparam("old"))
        .values(external_id=bindparam("new"), updated_at=bindparam("at")),
        "old",
        "new",
        "at",
    )
    with pytest.raises(IntegrityError), db.write() as session:
        rename.execute(session, {"old": "x", "new": "y", "at": datetime.now(UTC)})


def test_a_write_leaving_a_python_side_default_to_sqlalchemy_is_refused(db: Database) -> None:
    """`Item.updated_at` has ``onupdate=``, which SQLAlchemy computes at execution: a
    statement that does not bind it would store NULL past SQLAlchemy, so it is refused."""
    retitle = DirectWrite(
        update(Item.__table__)
        .where(Item.__table__.c.external_id == bindparam("item"))
        .values(title=bindparam("title")),
        "item",
        "title",
    )
    with pytest.raises(ValueError, match="updated_at"), db.write() as session:
        retitle.execute(session, {"item": "x", "title": "X"})
