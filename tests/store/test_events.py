"""Users, events and profiles data access on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import event, func, select

from store.db import Database
from store.errors import NotFound
from store.events import (
    EventRow,
    add_pending,
    count_events,
    delete_user,
    ensure_users,
    event_targets,
    get_profile,
    get_user,
    insert_events,
    insert_profiles,
    lock_profile_rows,
    lock_profiles,
    profile_by_external_id,
    seen_item_ids,
    update_profiles,
    user_events,
)
from store.items import ItemInput, catalogue_revision, delete_item, store_vectors, upsert_items
from store.models import Profile, User

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


def _setup(db: Database, users: list[str], items: int = 2) -> tuple[dict[str, int], list[int]]:
    with db.write() as session:
        user_ids = ensure_users(session, users)
        rows = upsert_items(session, [ItemInput(f"i{n}", f"Item {n}") for n in range(items)])
        return user_ids, [row.id for row in rows]


def _profile(user_id: int) -> Profile:
    return Profile(
        user_id=user_id,
        dim=2,
        half_lives=[0.0],
        accumulators=bytes(16),
        weight_sums=bytes(8),
        ref_time=0.0,
    )


def test_ensure_users_creates_once(db: Database) -> None:
    with db.write() as session:
        first = ensure_users(session, ["alice", "bob", "alice"])
    with db.write() as session:
        again = ensure_users(session, ["bob", "carol"])
    assert set(first) == {"alice", "bob"}
    assert again["bob"] == first["bob"]
    with db.read() as session:
        assert len(session.scalars(select(User)).all()) == 3
        assert get_user(session, "carol").id == again["carol"]
        with pytest.raises(NotFound):
            get_user(session, "dave")


def test_event_targets_reads_live_items_and_known_users_at_once(db: Database) -> None:
    vector = bytes(range(8))
    with db.write() as session:
        users = ensure_users(session, ["alice", "bob"])
        rows = upsert_items(session, [ItemInput(f"i{n}", f"Item {n}") for n in range(4)])
        items = [row.id for row in rows]
        # i0: current for "m"; i1: made by another model; i2: made from an older text.
        store_vectors(session, "m", 2, [(rows[0].id, rows[0].content_hash, vector)])
        store_vectors(session, "other", 2, [(rows[1].id, rows[1].content_hash, vector)])
        store_vectors(session, "m", 2, [(rows[2].id, "an older text", vector)])
        delete_item(session, "i3")
    with db.write() as session:
        found_items, found_users = event_targets(
            session, ["i0", "i1", "i2", "i3", "nope"], ["alice", "bob", "carol"], "m"
        )
    assert found_items == {
        "i0": (items[0], vector),
        "i1": (items[1], None),
        "i2": (items[2], None),
    }
    assert found_users == {"alice": users["alice"], "bob": users["bob"]}
    with db.write() as session:
        assert event_targets(session, [], [], "m") == ({}, {})
        # Users it read need no second query; unknown ones are still created.
        ensured = ensure_users(session, ["alice", "carol"], known=found_users)
    assert ensured["alice"] == users["alice"]
    with db.read() as session:
        assert get_user(session, "carol").id == ensured["carol"]


def test_insert_events_is_idempotent_by_event_id(db: Database) -> None:
    users, items = _setup(db, ["u"])
    row = EventRow("e1", users["u"], items[0], "view", None, T0)
    with db.write() as session:
        assert insert_events(session, [row, row]) == {"e1"}
    with db.write() as session:
        other = EventRow("e2", users["u"], items[1], "click", 1.5, T0)
        assert insert_events(session, [row, other]) == {"e2"}
    with db.read() as session:
        assert count_events(session) == 2
        assert seen_item_ids(session, users["u"]) == set(items)


def test_the_request_read_carries_profile_revision_and_seen_items(db: Database) -> None:
    """One statement serves a recommendation's reads: the user, the profile, the catalogue
    revision, the events pending on the profile and (when asked) the items the user has events
    on, repeats counted once; read past the Session, it gives the columns as the ORM does (JSON
    decoded, bytes as bytes, aware datetimes)."""
    users, items = _setup(db, ["u", "new"], items=3)
    with db.write() as session:
        session.add(_profile(users["u"]))
        rows = [
            EventRow("e1", users["u"], items[0], "view", None, T0),
            EventRow("e2", users["u"], items[0], "click", None, T0 + timedelta(seconds=1)),
            EventRow("e3", users["u"], items[2], "view", None, T0 + timedelta(seconds=2)),
        ]
        insert_events(session, rows)
        add_pending(session, [("e3", users["u"]), ("e2", users["u"])])
    with db.read() as session:
        revision = catalogue_revision(session)
        seen = seen_item_ids(session, users["u"])
        stored = get_profile(session, users["u"])
    found = profile_by_external_id(db, "u", "test-model", with_seen=True)
    assert found.user_id == users["u"] and found.profile.dim == 2
    # Each with its item's vector when current for the model (none here); in any order.
    pending = sorted((p.item_id, p.type, p.value, p.timestamp, p.vector) for p in found.pending)
    assert pending == [
        (items[0], "click", None, T0 + timedelta(seconds=1), None),
        (items[2], "view", None, T0 + timedelta(seconds=2), None),
    ]
    assert found.catalogue_revision == revision > 0
    assert found.seen == {items[0], items[2]} == seen
    for name in ("half_lives", "accumulators", "weight_sums", "ref_time", "recent", "event_count"):
        assert getattr(found.profile, name) == getattr(stored, name), name
        assert type(getattr(found.profile, name)) is type(getattr(stored, name)), name
    assert profile_by_external_id(db, "u", "test-model").seen == set()  # not asked for
    no_events = profile_by_external_id(db, "new", "test-model", with_seen=True)
    assert (no_events.user_id, no_events.profile, no_events.seen) == (users["new"], None, set())
    assert no_events.catalogue_revision == revision
    assert no_events.pending == ()
    assert profile_by_external_id(db, "nobody", "test-model", with_seen=True).user_id is None


def test_insert_events_keeps_every_column_and_reports_only_new_ids(db: Database) -> None:
    users, items = _setup(db, ["u", "v"])
    with db.write() as session:
        insert_events(session, [EventRow("old", users["u"], items[0], "view", None, T0)])
    rows = [
        EventRow("old", users["v"], items[1], "click", 2.0, T0),  # already stored
        EventRow("a", users["u"], items[1], "click", 2.5, T0 + timedelta(seconds=1), "rec-1"),
        EventRow("b", users["v"], items[0], "view", None, T0 + timedelta(seconds=2)),
    ]
    with db.write() as session:
        assert insert_events(session, rows) == {"a", "b"}
    with db.read() as session:
        stored = {e.event_id: e for e in user_events(session, users["u"])}
        stored.update({e.event_id: e for e in user_events(session, users["v"])})
    assert set(stored) == {"old", "a", "b"}
    assert stored["old"].user_id == users["u"]  # the stored event was left alone
    a = stored["a"]
    assert (a.user_id, a.item_id, a.type, a.value, a.recomm_id) == (
        users["u"],
        items[1],
        "click",
        2.5,
        "rec-1",
    )
    assert a.timestamp == T0 + timedelta(seconds=1)
    assert stored["b"].recomm_id is None and stored["b"].value is None


def test_insert_events_beyond_the_bound_parameter_limit(db: Database) -> None:
    # 10,000 rows x 7 columns is over PostgreSQL's 65,535 parameters for one statement.
    users, items = _setup(db, ["u"])
    rows = [
        EventRow(f"e{n}", users["u"], items[n % 2], "view", None, T0 + timedelta(seconds=n))
        for n in range(10_000)
    ]
    with db.write() as session:
        assert len(insert_events(session, rows)) == 10_000
    with db.write() as session:
        assert insert_events(session, rows) == set()
    with db.read() as session:
        assert count_events(session) == 10_000


def test_event_timestamps_round_trip_as_aware_utc(db: Database) -> None:
    users, items = _setup(db, ["u"])
    india = timezone(timedelta(hours=5, minutes=30))
    local = datetime(2024, 3, 1, 18, 0, 0, 250_000, tzinfo=india)
    with db.write() as session:
        insert_events(session, [EventRow("e1", users["u"], items[0], "view", None, local)])
    with db.read() as session:
        [stored] = user_events(session, users["u"])
    assert stored.timestamp == local
    assert stored.timestamp.utcoffset() == timedelta(0)
    assert (stored.timestamp.hour, stored.timestamp.minute) == (12, 30)
    assert stored.received_at.tzinfo is not None


def test_user_events_order(db: Database) -> None:
    users, items = _setup(db, ["u"])
    rows = [
        EventRow(f"e{n}", users["u"], items[0], "view", None, T0 + timedelta(minutes=m))
        for n, m in enumerate([5, 1, 3])
    ]
    with db.write() as session:
        insert_events(session, rows)
    with db.read() as session:
        oldest_first = [e.event_id for e in user_events(session, users["u"])]
        newest = [e.event_id for e in user_events(session, users["u"], newest_first=True, limit=2)]
    assert oldest_first == ["e1", "e2", "e0"]
    assert newest == ["e0", "e2"]


def test_lock_profiles_in_user_id_order(db: Database) -> None:
    users, _ = _setup(db, ["a", "b", "c", "d"])
    ids = sorted(users.values())
    with db.write() as session:
        for user_id in reversed(ids):
            session.add(_profile(user_id))

    statements: list[str] = []
    listener = lambda _conn, _cursor, statement, *_: statements.append(statement)  # noqa: E731
    event.listen(db.engine, "before_cursor_execute", listener)
    try:
        with db.write() as session:
            locked = lock_profiles(session, [ids[3], ids[0], ids[2], ids[0], 999_999])
    finally:
        event.remove(db.engine, "before_cursor_execute", listener)
    assert list(locked) == [ids[0], ids[2], ids[3]]
    assert all(locked[user_id].user_id == user_id for user_id in locked)
    [query] = [s for s in statements if "FROM profiles" in s]
    assert "ORDER BY profiles.user_id" in query
    assert ("FOR UPDATE" in query) == (db.dialect == "postgresql")
    with db.write() as session:
        assert lock_profiles(session, []) == {}


def test_profile_rows_locked_in_order_and_updated_with_a_new_version(db: Database) -> None:
    users, _ = _setup(db, ["a", "b", "c"])
    ids = sorted(users.values())
    with db.write() as session:
        session.add(_profile(ids[2]))
    with db.write() as session:
        created = insert_profiles(
            session,
            [
                {**_columns(ids[0]), "user_id": ids[0]},
                {**_columns(ids[2]), "user_id": ids[2], "event_count": 99},
            ],
        )
        locked = lock_profile_rows(session, [ids[2], ids[0], ids[1]])
        if db.dialect == "postgresql":  # (SQLite's write transaction holds the whole file)
            assert _row_is_locked(db, ids[2])
        update_profiles(
            session,
            [{**_columns(uid), "user_id": uid, "event_count": uid} for uid in locked],
        )
    assert created == {ids[0]}  # the existing profile was left alone
    assert list(locked) == [ids[0], ids[2]]
    assert locked[ids[2]].event_count == 0
    with db.read() as session:
        stored = {p.user_id: p for p in session.scalars(select(Profile))}
    assert {uid: p.event_count for uid, p in stored.items()} == {ids[0]: ids[0], ids[2]: ids[2]}
    assert stored[ids[0]].version == 2  # inserted as 1, bumped by the update
    assert stored[ids[2]].version == 2  # the ORM's first version, bumped by the update


def _row_is_locked(db: Database, user_id: int) -> bool:
    """Whether another connection finds this profile row locked (PostgreSQL)."""
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    with db.engine.connect() as other:
        try:
            other.execute(
                text("SELECT 1 FROM profiles WHERE user_id = :uid FOR UPDATE NOWAIT"),
                {"uid": user_id},
            )
        except OperationalError as exc:
            return "could not obtain lock" in str(exc)
        return False


def _columns(user_id: int) -> dict[str, object]:
    profile = _profile(user_id)
    return {
        "dim": profile.dim,
        "half_lives": profile.half_lives,
        "accumulators": profile.accumulators,
        "weight_sums": profile.weight_sums,
        "ref_time": profile.ref_time,
        "recent": b"",
        "event_count": 0,
    }


def test_delete_user_removes_events_and_profile(db: Database) -> None:
    users, items = _setup(db, ["u", "keep"])
    with db.write() as session:
        session.add(_profile(users["u"]))
        insert_events(
            session,
            [
                EventRow("e1", users["u"], items[0], "view", None, T0),
                EventRow("e2", users["keep"], items[0], "view", None, T0),
            ],
        )
    with db.write() as session:
        delete_user(session, "u")
    with db.read() as session:
        assert get_profile(session, users["u"]) is None
        assert count_events(session) == 1
        with pytest.raises(NotFound):
            get_user(session, "u")
    with db.write() as session, pytest.raises(NotFound):
        delete_user(session, "u")


def test_users_with_any_text_as_id_are_found_again(db: Database) -> None:
    """User lookups bind their ids as one JSON text on SQLite (`store.dialect.bound_list`): ids
    outside ASCII (an emoji's surrogate pair in JSON), with quotes, backslashes or control
    characters must come back as the same strings."""
    names = ["u\U0001f600", "é", 'a"b', "back\\slash", "line\u2028sep", "ctl\x01", "[1]"]
    with db.write() as session:
        created = ensure_users(session, names)
    with db.write() as session:
        again = ensure_users(session, names)
    assert set(created) == set(names) and again == created
    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(User)) == len(names)


def test_one_profile_inserted_alone_reports_whether_it_was_created(db: Database) -> None:
    """A user's first event inserts one profile row (on the Session's DBAPI connection, both
    databases): created when new, left alone and not reported when another writer's exists."""
    users, _ = _setup(db, ["a", "b"])
    first, second = sorted(users.values())
    with db.write() as session:
        assert insert_profiles(session, [{**_columns(first), "user_id": first}]) == {first}
    with db.write() as session:
        again = {**_columns(first), "user_id": first, "event_count": 99}
        assert insert_profiles(session, [again]) == set()
        assert insert_profiles(session, [{**_columns(second), "user_id": second}]) == {second}
    with db.read() as session:
        stored = {p.user_id: p for p in session.scalars(select(Profile))}
    assert stored[first].event_count != 99 and stored[first].version == 1
    assert set(stored) == {first, second}


def test_profiles_inserted_together_report_only_those_created(db: Database) -> None:
    """Many profile rows in one call (an import's new users; one query and one executemany on
    SQLite, a pipelined executemany on PostgreSQL): a user who has a profile keeps it, a user
    named twice gets the first row, and only the created ones are reported."""
    users, _ = _setup(db, ["a", "b", "c"])
    first, second, third = sorted(users.values())
    with db.write() as session:
        assert insert_profiles(session, [{**_columns(first), "user_id": first}]) == {first}
    rows = [
        {**_columns(first), "user_id": first, "event_count": 99},
        {**_columns(second), "user_id": second, "event_count": 2},
        {**_columns(third), "user_id": third, "event_count": 3},
        {**_columns(second), "user_id": second, "event_count": 98},
    ]
    with db.write() as session:
        assert insert_profiles(session, rows) == {second, third}
    with db.read() as session:
        counts = dict(session.execute(select(Profile.user_id, Profile.event_count)).all())
    assert counts == {first: 0, second: 2, third: 3}


def test_attribution_reads_events_through_the_partial_recomm_id_index(sqlite_url: str) -> None:
    """Migration 0010 keeps only events that name an answer in ``ix_events_recomm_id``: the
    read of recently issued answers' ids (a comparison on the column, which implies it is not
    NULL) must still use it, not scan the events."""
    from sqlalchemy import text

    from store.recommendations import unanswered_recent_ids

    database = Database(sqlite_url)
    statements: list[tuple[str, object]] = []

    @event.listens_for(database.engine, "before_cursor_execute")
    def _capture(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if "recomm_id" in statement and statement.lstrip().upper().startswith("SELECT"):
            statements.append((statement, parameters))

    try:
        with database.read() as session:
            unanswered_recent_ids(session, T0.timestamp())
        ((sql, params),) = statements
        with database.engine.connect() as connection:
            rows = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", params).all()
        plan = " ".join(str(row[-1]) for row in rows)
        assert "INDEX ix_events_recomm_id" in plan, plan
        with database.engine.connect() as connection:
            (index_sql,) = connection.execute(
                text("SELECT sql FROM sqlite_master WHERE name = 'ix_events_recomm_id'")
            ).one()
        assert "IS NOT NULL" in index_sql.upper()
    finally:
        database.dispose()
