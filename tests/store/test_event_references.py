"""The events' references to users and items hold on both databases: foreign keys on SQLite, a
statement-level trigger under the same constraint names on PostgreSQL (migration 0014)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.exc import IntegrityError

from store.db import Database
from store.events import EventRow, ensure_users, insert_events
from store.items import ItemInput, upsert_items
from store.models import Event, Item, User

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
MISSING = 999_999


def _setup(db: Database) -> tuple[list[int], list[int]]:
    with db.write() as session:
        users = ensure_users(session, ["u0", "u1"])
        items = upsert_items(session, [ItemInput(f"i{n}", f"Item {n}") for n in range(2)])
        return [users["u0"], users["u1"]], [item.id for item in items]


def _event_count(db: Database, *criteria: object) -> int:
    with db.read() as session:
        return session.scalar(select(func.count()).select_from(Event).where(*criteria))


def _refused(db: Database, rows: list[EventRow], constraint: str) -> None:
    with pytest.raises(IntegrityError) as raised, db.write() as session:
        insert_events(session, rows)
    if db.dialect == "postgresql":
        assert raised.value.orig.diag.constraint_name == constraint
    else:
        assert "FOREIGN KEY constraint failed" in str(raised.value)


@pytest.mark.parametrize(
    ("missing", "constraint"),
    [("user", "fk_events_user_id_users"), ("item", "fk_events_item_id_items")],
)
def test_a_batch_naming_a_missing_user_or_item_is_refused_whole(
    db: Database, missing: str, constraint: str
) -> None:
    users, items = _setup(db)
    bad = (
        EventRow("bad", MISSING, items[0], "view", None, T0)
        if missing == "user"
        else EventRow("bad", users[0], MISSING, "view", None, T0)
    )
    good = [EventRow(f"ok{n}", users[n], items[n], "view", None, T0) for n in range(2)]
    _refused(db, [good[0], bad, good[1]], constraint)
    assert _event_count(db) == 0
    with db.write() as session:
        assert insert_events(session, good) == {"ok0", "ok1"}  # the check passes valid rows


def test_moving_events_to_a_missing_user_is_refused(db: Database) -> None:
    users, items = _setup(db)
    with db.write() as session:
        insert_events(session, [EventRow("e", users[0], items[0], "view", None, T0)])
    with pytest.raises(IntegrityError), db.write() as session:
        session.execute(update(Event).values(user_id=MISSING))
    with db.write() as session:  # to a user who exists: allowed
        session.execute(update(Event).values(user_id=users[1]))
    assert _event_count(db, Event.user_id == users[1]) == 1


@pytest.mark.parametrize("table", [User, Item])
def test_deleting_a_user_or_item_row_deletes_its_events(db: Database, table: type) -> None:
    users, items = _setup(db)
    with db.write() as session:
        insert_events(
            session,
            [
                EventRow(f"e{u}{i}", users[u], items[i], "view", None, T0)
                for u in range(2)
                for i in range(2)
            ],
        )
    gone = users[0] if table is User else items[0]
    column = Event.user_id if table is User else Event.item_id
    with db.write() as session:
        session.execute(delete(table).where(table.id == gone))
    assert _event_count(db, column == gone) == 0
    assert _event_count(db) == 2


_WAITING_FOR_A_LOCK = text(
    "SELECT count(*) FROM pg_stat_activity "
    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
)


def _when_waiting(db: Database, work: Callable[[], None]) -> tuple[threading.Thread, list]:
    """``work`` started in a thread, returned once its statement waits for a row lock (so the
    caller's next step happens while it waits); the list receives its error, if any."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as error:  # noqa: BLE001 - reported to the test
            errors.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 10
    while True:
        with db.read() as session:
            waiting = session.scalar(_WAITING_FOR_A_LOCK)
        if waiting or not thread.is_alive():
            return thread, errors
        assert time.monotonic() < deadline, "the statement never waited for the lock"
        time.sleep(0.01)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_an_event_for_a_user_being_deleted_waits_and_is_refused(db: Database) -> None:
    """A user deleted by a transaction still open: an event naming them waits for it, then is
    refused; no event is left behind without its user."""
    users, items = _setup(db)
    deleting = db.engine.connect()
    transaction = deleting.begin()
    deleting.execute(delete(User).where(User.id == users[0]))

    def post() -> None:
        with db.write() as session:
            insert_events(session, [EventRow("late", users[0], items[0], "view", None, T0)])

    thread, errors = _when_waiting(db, post)
    transaction.commit()
    deleting.close()
    thread.join(10)
    assert len(errors) == 1 and isinstance(errors[0], IntegrityError)
    assert errors[0].orig.diag.constraint_name == "fk_events_user_id_users"
    assert _event_count(db) == 0


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_deleting_a_user_waits_for_an_open_event_and_deletes_it(db: Database) -> None:
    """An event inserted by a transaction still open: deleting its user waits for it, then
    deletes that event too."""
    users, items = _setup(db)
    posting = db.engine.connect()
    transaction = posting.begin()
    posting.execute(
        Event.__table__.insert(),
        {
            "event_id": "open",
            "user_id": users[0],
            "item_id": items[0],
            "type": "view",
            "timestamp": T0,
            "received_at": T0,
        },
    )

    def remove_user() -> None:
        with db.write() as session:
            session.execute(delete(User).where(User.id == users[0]))

    thread, errors = _when_waiting(db, remove_user)
    transaction.commit()
    posting.close()
    thread.join(10)
    assert errors == []
    assert _event_count(db) == 0
