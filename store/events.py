"""Data access for users, events and profiles. Functions take a `Session` and never commit."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import repeat
from typing import Any, NamedTuple

import numpy as np
from sqlalchemy import (
    ColumnElement,
    Select,
    String,
    Update,
    bindparam,
    case,
    cast,
    delete,
    func,
    literal_column,
    null,
    select,
    type_coerce,
    union_all,
    update,
)
from sqlalchemy.engine import Dialect, Row
from sqlalchemy.orm import Session

from store.db import Database
from store.dialect import (
    bound_list,
    covering_select,
    in_bound_list,
    in_list,
    insert_ignoring_conflicts,
)
from store.direct_read import DirectRead, DirectWrite, execute_driver_sql, executemany_driver_sql
from store.errors import NotFound
from store.items import REVISION_COLUMN, has_current_vector, live_items_select
from store.models import (
    PROFILE_VERSIONS_INDEX,
    Event,
    Item,
    PendingEvent,
    Profile,
    StaleProfile,
    User,
)
from store.recommendations import delete_user_sessions
from store.types import refuse_naive, utc_bind_processor, utcnow

#: The profile columns `interest.profile.state_from_row` reads, and the version (which a
#: writer that folded outside a transaction compares, `profile_versions`).
PROFILE_STATE_COLUMNS = (
    "user_id",
    "dim",
    "half_lives",
    "accumulators",
    "weight_sums",
    "ref_time",
    "recent",
    "event_count",
    "version",
)


class EventRow(NamedTuple):
    """An event as stored (internal user and item ids). A named tuple: bulk imports make one
    per event, and a frozen dataclass cost 1.8 us to build against 0.5."""

    event_id: str
    user_id: int
    item_id: int
    type: str
    value: float | None
    timestamp: datetime
    recomm_id: str | None = None


def ensure_users(
    session: Session, external_ids: Iterable[str], *, known: Mapping[str, int] | None = None
) -> dict[str, int]:
    """Return internal ids for ``external_ids``, creating the users that do not exist yet.

    Known users cost one query (none when ``known``, ids this transaction read already,
    `event_targets`, holds them); only the missing ones are inserted (conflict-free, so
    concurrent creators of the same user do not fail) and read back.
    """
    wanted = sorted(set(external_ids))
    if not wanted:
        return {}
    if known is None:
        found = user_ids(session, wanted)
    else:
        found = {external_id: known[external_id] for external_id in wanted if external_id in known}
    missing = [external_id for external_id in wanted if external_id not in found]
    if missing:
        now = utcnow()
        # In sorted order, as every creator inserts them: two cannot deadlock.
        insert_ignoring_conflicts(
            session,
            User.__table__,
            [{"external_id": external_id, "created_at": now} for external_id in missing],
            "external_id",
        )
        found.update(user_ids(session, missing))
    return found


# The statements on the per-event path are built and compiled once and run on the Session's
# DBAPI connection (`store.direct_read`): building a select() and its cache key, or SQLAlchemy's
# per-execution work, cost more than running it against SQLite. IN lists are one bound value
# (`store.dialect.in_bound_list`), so the statement's text does not change with their length.


_USER_IDS = {
    dialect: DirectRead(
        select(User.__table__.c.external_id, User.__table__.c.id).where(
            in_bound_list(User.__table__.c.external_id, "ids", dialect)
        ),
        "ids",
    )
    for dialect in ("postgresql", "sqlite")
}


def user_ids(session: Session, external_ids: Iterable[str]) -> dict[str, int]:
    """Internal ids of the known users among ``external_ids``, by external id."""
    dialect = session.get_bind().dialect.name
    rows = _USER_IDS[dialect].all_in(session, {"ids": bound_list(set(external_ids), dialect)})
    return {external_id: user_id for external_id, user_id in rows}


@functools.cache
def _event_targets(dialect: str) -> DirectRead:
    users = User.__table__.c
    items = live_items_select(dialect, "item_ids").add_columns(literal_column("1").label("is_item"))
    known_users = select(users.external_id, users.id, null(), literal_column("0")).where(
        in_bound_list(users.external_id, "user_ids", dialect)
    )
    return DirectRead(union_all(items, known_users), "item_ids", "user_ids", "model", binary=True)


def event_targets(
    session: Session, item_ids: Iterable[str], external_user_ids: Iterable[str], model: str
) -> tuple[dict[str, tuple[int, bytes | None]], dict[str, int]]:
    """What a batch of events names, in one statement in the session's transaction: the live
    items among ``item_ids`` as (internal id, float32 vector bytes if current for ``model``,
    else None) and the known users among ``external_user_ids`` (internal ids), both by
    external id. One round trip on PostgreSQL where the two reads took two, on every batch."""
    dialect = session.get_bind().dialect.name
    params = {
        "item_ids": bound_list(set(item_ids), dialect),
        "user_ids": bound_list(set(external_user_ids), dialect),
        "model": model,
    }
    items: dict[str, tuple[int, bytes | None]] = {}
    users: dict[str, int] = {}
    rows = _event_targets(dialect).all_in(session, params)
    for external_id, internal_id, vector, is_item in rows:
        if is_item:
            items[external_id] = (internal_id, vector)
        else:
            users[external_id] = internal_id
    return items, users


def _pending_event_columns() -> tuple[ColumnElement[Any], ...]:
    """What a reader folds of a pending event (`PendingEvent`): the event's item, type, value
    and time, and the item's vector when it is current for the bound ``model`` (else NULL,
    folded as zeros, as a rebuild from the log does)."""
    events, items = Event.__table__.c, Item.__table__.c
    vector = case((has_current_vector(bindparam("model")), items.vector), else_=None)
    return (events.item_id, events.type, events.value, events.timestamp, vector.label("vector"))


#: Pending events with their rows in events and items (what `_pending_event_columns` reads).
_PENDING_JOIN = PendingEvent.__table__.join(Event.__table__).join(
    Item.__table__, Item.__table__.c.id == Event.__table__.c.item_id
)


def _profile_read(with_seen: bool) -> DirectRead:
    """The request path's statement, built once and run past SQLAlchemy's Session and
    Connection (`store.direct_read`: every recommendation runs it): the user's id, the
    catalogue revision and the profile's state (``part`` 0; NULLs without a profile), then one
    row per event pending on the profile (``part`` 1), all from one snapshot. ``with_seen``
    adds the ids of the items the user has events on, as one comma-separated string
    (group_concat on SQLite, string_agg on PostgreSQL; repeats included, the reader dedupes).
    """
    users, profiles = User.__table__, Profile.__table__
    event_columns = _pending_event_columns()
    seen = (
        select(func.aggregate_strings(cast(Event.__table__.c.item_id, String), ","))
        .where(Event.__table__.c.user_id == users.c.id)
        .scalar_subquery()
        if with_seen
        else null()
    )
    head = (
        select(
            literal_column("0").label("part"),
            users.c.id.label("uid"),
            REVISION_COLUMN,
            *(profiles.c[name] for name in PROFILE_STATE_COLUMNS),
            type_coerce(seen, String).label("seen"),
            # Typed, so that the union's columns get their result processors (datetimes).
            *(type_coerce(null(), c.type).label(c.name) for c in event_columns),
        )
        .select_from(users.outerjoin(profiles))
        .where(users.c.external_id == bindparam("external_id"))
    )
    tail = (
        select(
            literal_column("1"),
            users.c.id,
            null(),
            *(null() for _ in PROFILE_STATE_COLUMNS),
            null(),
            *event_columns,
        )
        .select_from(users.join(_PENDING_JOIN, PendingEvent.__table__.c.user_id == users.c.id))
        .where(users.c.external_id == bindparam("external_id"))
    )
    return DirectRead(
        union_all(head, tail).order_by(literal_column("part")),
        "external_id",
        "model",
        binary=True,
    )


_READ_PROFILE = _profile_read(with_seen=False)
_READ_PROFILE_AND_SEEN = _profile_read(with_seen=True)
_SEEN_ITEM_IDS = (
    select(Event.__table__.c.item_id)
    .where(Event.__table__.c.user_id == bindparam("user_id"))
    .distinct()
)


@dataclass(frozen=True)
class UserProfileRow:
    """A user's id and profile columns as the read path wants them (no ORM object), with the
    catalogue revision and the events pending on the profile read in the same statement
    (`store.items.catalogue_revision`)."""

    #: None for an unknown user.
    user_id: int | None
    #: The `Profile` columns `interest.profile.state_from_row` reads; None without a profile.
    profile: Any
    #: None for an unknown user (the statement found no row to carry it).
    catalogue_revision: int | None
    #: Items the user has events on (`seen_item_ids`), when asked for; else empty.
    seen: frozenset[int] = frozenset()
    #: Events not in the stored profile yet (`PendingEvent`): rows with item_id, type, value,
    #: an aware timestamp and ``vector`` (current float32 bytes, or None).
    pending: tuple[Any, ...] = ()


def profile_by_external_id(
    db: Database, external_id: str, model: str, *, with_seen: bool = False
) -> UserProfileRow:
    """A user's id, profile, pending events (with their items' vectors by ``model``) and the
    catalogue revision, with ``with_seen`` the items the user has events on too: one
    statement, its own transaction, either way."""
    read = _READ_PROFILE_AND_SEEN if with_seen else _READ_PROFILE
    rows = read.all(db, {"external_id": external_id, "model": model})
    if not rows:
        return UserProfileRow(None, None, None)
    head = rows[0]
    return UserProfileRow(
        head.uid,
        head if head.user_id is not None else None,
        int(head.catalogue_revision or 0),
        frozenset(map(int, head.seen.split(","))) if with_seen and head.seen else frozenset(),
        tuple(rows[1:]),
    )


def get_user(session: Session, external_id: str) -> User:
    user = session.scalar(select(User).where(User.external_id == external_id))
    if user is None:
        raise NotFound(f"user {external_id!r} not found")
    return user


def delete_user(session: Session, external_id: str) -> None:
    """Remove the user with their events, profile and the answers they were given."""
    user = get_user(session, external_id)
    # The user's row first, as rebuilds and import folds take it (`lock_users`): taking the
    # profile first deadlocked against them on PostgreSQL.
    lock_users(session, [user.id])
    session.execute(delete(PendingEvent).where(PendingEvent.user_id == user.id))
    session.execute(delete(Event).where(Event.user_id == user.id))
    session.execute(delete(Profile).where(Profile.user_id == user.id))
    delete_user_sessions(session, external_id)
    session.delete(user)
    session.flush()


def insert_events(session: Session, rows: Sequence[EventRow]) -> set[str]:
    """Insert events, skipping ids already stored; return the event ids actually inserted.

    One set-based statement for the whole batch (no per-row parameter processing): the API's
    batches come through here, bulk imports through `insert_event_columns`.
    """
    if not rows:
        return set()
    timestamps = [row.timestamp for row in rows]
    to_db = stored_timestamp(session.get_bind().dialect)
    if to_db is None:
        refuse_naive(timestamps)  # PostgreSQL would read a naive one in its own zone
    else:
        timestamps = [to_db(stamp) for stamp in timestamps]  # raises for a naive one
    return insert_event_columns(
        session,
        NewEvents(
            [row.event_id for row in rows],
            [row.user_id for row in rows],
            [row.item_id for row in rows],
            [row.type for row in rows],
            [row.value for row in rows],
            timestamps,
            [row.recomm_id for row in rows],
        ),
    )


@dataclass(frozen=True, slots=True)
class NewEvents:
    """Events to insert as columns, each timestamp already in the form the database's driver
    takes (`stored_timestamp`)."""

    event_ids: Sequence[str]
    user_ids: Sequence[int]
    item_ids: Sequence[int]
    types: Sequence[str]
    values: Sequence[float | None]
    timestamps: Sequence[Any]
    recomm_ids: Sequence[str | None] | None = None  # None: no event has one

    def __len__(self) -> int:
        return len(self.event_ids)

    def columns(self) -> tuple[Iterable[Any], ...]:
        """The columns in `_EVENT_COLUMNS` order (no recomm_id: a column of None)."""
        recomm_ids = self.recomm_ids if self.recomm_ids is not None else repeat(None, len(self))
        return (
            self.event_ids,
            self.user_ids,
            self.item_ids,
            self.types,
            self.values,
            self.timestamps,
            recomm_ids,
        )


def stored_timestamp(dialect: Dialect) -> Callable[[datetime], Any] | None:
    """What turns an aware UTC datetime into the value `NewEvents.timestamps` holds on
    ``dialect``: SQLite's text form; None on PostgreSQL, whose driver takes the datetime."""
    return None if dialect.name == "postgresql" else utc_bind_processor(dialect)


def insert_event_columns(session: Session, events: NewEvents) -> set[str]:
    """`insert_events` on columns whose timestamps are in their stored form."""
    if not len(events):
        return set()
    if session.get_bind().dialect.name == "postgresql":
        return _insert_postgresql(session, events, utcnow())
    return _insert_sqlite(session, events, utcnow())


_EVENT_COLUMNS = ("event_id", "user_id", "item_id", "type", "value", "timestamp", "recomm_id")
_INSERT_COLUMNS = ", ".join((*_EVENT_COLUMNS, "received_at"))
_POSTGRESQL_ARRAYS = (
    "text[]",
    "bigint[]",
    "bigint[]",
    "text[]",
    "float8[]",
    "timestamptz[]",
    "text[]",
)
# psycopg's own parameter style; the arrays in its binary format (``%b``): dumping a batch of
# 10,000 rows' seven arrays as text took 70-78 ms of CPU, as binary 15-21 ms.
_POSTGRESQL_INSERT = (
    f"INSERT INTO events ({_INSERT_COLUMNS}) SELECT *, CAST(%(received_at)s AS timestamptz) "
    "FROM unnest("
    + ", ".join(
        f"CAST(%({name})b AS {array})"
        for name, array in zip(_EVENT_COLUMNS, _POSTGRESQL_ARRAYS, strict=True)
    )
    + ") ON CONFLICT (event_id) DO NOTHING RETURNING event_id"
)


def _insert_postgresql(session: Session, events: NewEvents, now: datetime) -> set[str]:
    """One INSERT ... SELECT FROM unnest(arrays): no per-row parameters, no parameter limit.
    Timestamps go as they are, aware datetimes, which psycopg sends with their offset."""
    arrays = {
        name: list(column) for name, column in zip(_EVENT_COLUMNS, events.columns(), strict=True)
    }
    inserted = execute_driver_sql(session, _POSTGRESQL_INSERT, {**arrays, "received_at": now})
    return {event_id for (event_id,) in inserted}


_MAX_EVENT_ID = DirectRead(select(func.max(Event.__table__.c.id).label("id")))
_EVENT_IDS_AFTER = DirectRead(
    select(Event.__table__.c.event_id).where(Event.__table__.c.id > bindparam("after")), "after"
)


def _insert_sqlite(session: Session, events: NewEvents, now: datetime) -> set[str]:
    """The driver's executemany, then the inserted rows read back by rowid when some were not.

    This transaction holds SQLite's write lock from the insert on (a deferred transaction whose
    snapshot went stale fails instead of writing), so every row past the largest id seen just
    before the insert is one of ours.
    """
    before = _MAX_EVENT_ID.all_in(session, {})[0].id or 0
    received_at = utc_bind_processor(session.get_bind().dialect)(now)
    count = len(events)
    inserted = executemany_driver_sql(
        session,
        f"INSERT INTO events ({_INSERT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (event_id) DO NOTHING",
        # Parameter tuples zipped in C: no Python code per event.
        zip(*events.columns(), repeat(received_at, count), strict=False),
    )
    if inserted == count:
        return set(events.event_ids)
    if inserted == 0:
        return set()
    return {row.event_id for row in _EVENT_IDS_AFTER.all_in(session, {"after": before})}


def lock_profiles(session: Session, ids: Iterable[int]) -> dict[int, Profile]:
    """Load profiles for update, locked in user-id order so concurrent writers cannot deadlock."""
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    stmt = select(Profile).where(Profile.user_id.in_(wanted)).order_by(Profile.user_id)
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    return {profile.user_id: profile for profile in session.scalars(stmt)}


def lock_profile_rows(
    session: Session, ids: Iterable[int], *, state: bool = True
) -> dict[int, Any]:
    """Like `lock_profiles`, as plain rows: the state columns (or, with ``state=False``, only
    the user id), no ORM objects. For writers that then call `update_profiles`."""
    return _profile_rows(session, ids, state, session.get_bind().dialect.name == "postgresql")


def profile_rows(session: Session, ids: Iterable[int]) -> dict[int, Any]:
    """The state columns of these users' profiles (those that exist), without locking them."""
    return _profile_rows(session, ids, True, False)


def _profile_rows(
    session: Session, ids: Iterable[int], state: bool, for_update: bool
) -> dict[int, Any]:
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    dialect = session.get_bind().dialect.name
    read = _profiles_read(dialect, state, for_update)
    return {row.user_id: row for row in read.all_in(session, {"ids": bound_list(wanted, dialect)})}


def profile_versions(session: Session, ids: Iterable[int]) -> dict[int, int]:
    """The version of each of these users' profiles (those that exist), in the session's
    transaction; on SQLite from `store.models.PROFILE_VERSIONS_INDEX`, not the 9 KB rows."""
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    dialect = session.get_bind().dialect.name
    rows = _PROFILE_VERSIONS[dialect].all_in(session, {"ids": bound_list(wanted, dialect)})
    return {user_id: version for user_id, version in rows}


_PROFILE_VERSIONS = {
    dialect: DirectRead(
        covering_select(
            Profile.__table__,
            PROFILE_VERSIONS_INDEX,
            "user_id",
            "version",
            param="ids",
            dialect=dialect,
        ),
        "ids",
    )
    for dialect in ("postgresql", "sqlite")
}


@functools.cache
def _profiles_read(dialect: str, state: bool, for_update: bool) -> DirectRead:
    profiles = Profile.__table__.c
    columns = [profiles[name] for name in PROFILE_STATE_COLUMNS] if state else [profiles.user_id]
    stmt = (
        select(*columns)
        .where(in_bound_list(profiles.user_id, "ids", dialect))
        .order_by(profiles.user_id)
    )
    return DirectRead(stmt.with_for_update() if for_update else stmt, "ids", binary=state)


def insert_profiles(session: Session, values: Sequence[dict[str, Any]]) -> set[int]:
    """Create profiles from column values (``user_id`` included); users who already have one
    keep it, so concurrent creators do not conflict. Returns the user ids created."""
    now = utcnow()
    created = insert_ignoring_conflicts(
        session,
        Profile.__table__,
        [{**row, "version": 1, "updated_at": now} for row in values],
        "user_id",
        returning=("user_id",),
    )
    return {user_id for (user_id,) in created}


def update_profiles(session: Session, values: Sequence[dict[str, Any]]) -> None:
    """Overwrite profiles with column values (``user_id`` names the row), one executemany.

    The caller holds the rows (`lock_profile_rows`). Each row's version is bumped, so an ORM
    writer holding an older copy (``version_id_col``) fails and retries instead of overwriting.
    """
    if not values:
        return
    now = utcnow()
    params = [{k: v for k, v in row.items() if k != "user_id"} for row in values]
    for param, row in zip(params, values, strict=True):
        param["profile_user_id"] = row["user_id"]
        param["profile_updated_at"] = now
    columns = tuple(name for name in values[0] if name != "user_id")
    _update_profiles_statement(columns).executemany(session, params)


@functools.cache
def _update_profiles_statement(columns: tuple[str, ...]) -> DirectWrite:
    return DirectWrite(profile_update(columns), *columns, "profile_user_id", "profile_updated_at")


def profile_update(columns: tuple[str, ...]) -> Update:
    """SET ``columns`` (bound by their names) and ``updated_at`` (bound as
    ``profile_updated_at``), the version bumped, of the row of ``profile_user_id``."""
    table = Profile.__table__
    return (
        update(table)
        .where(table.c.user_id == bindparam("profile_user_id"))
        .values(
            {
                **{name: bindparam(name) for name in columns},
                "version": table.c.version + 1,
                "updated_at": bindparam("profile_updated_at"),
            }
        )
    )


# Events not yet in their users' stored profiles (`store.models.PendingEvent`). Writers hold
# the users' profile rows (`lock_profile_rows`) around every call below.
_PENDING_COUNTS = {
    dialect: DirectRead(
        select(PendingEvent.__table__.c.user_id, func.count().label("n"))
        .where(in_bound_list(PendingEvent.__table__.c.user_id, "ids", dialect))
        .group_by(PendingEvent.__table__.c.user_id),
        "ids",
    )
    for dialect in ("postgresql", "sqlite")
}


_PENDING_EVENTS = {
    dialect: DirectRead(
        select(Event.__table__.c.event_id, Event.__table__.c.user_id, *_pending_event_columns())
        .select_from(_PENDING_JOIN)
        .where(in_bound_list(PendingEvent.__table__.c.user_id, "ids", dialect))
        .order_by(Event.__table__.c.user_id, Event.__table__.c.id),
        "ids",
        "model",
        binary=True,
    )
    for dialect in ("postgresql", "sqlite")
}
_ADD_PENDING = DirectWrite(
    PendingEvent.__table__.insert().values(
        event_id=bindparam("pending_event_id"), user_id=bindparam("pending_user_id")
    ),
    "pending_event_id",
    "pending_user_id",
)


def pending_counts(session: Session, user_ids: Iterable[int]) -> dict[int, int]:
    """How many events of each of these users wait outside their stored profiles (users
    with none are absent)."""
    dialect = session.get_bind().dialect.name
    read = _PENDING_COUNTS[dialect]
    rows = read.all_in(session, {"ids": bound_list(sorted(set(user_ids)), dialect)})
    return {user_id: count for user_id, count in rows}


def pending_events(session: Session, user_ids: Iterable[int], model: str) -> list[Any]:
    """The events of these users that wait outside their stored profiles: rows with event_id,
    user_id, item_id, type, value, an aware timestamp and ``vector`` (the item's current
    float32 vector bytes for ``model``, or None), by user."""
    dialect = session.get_bind().dialect.name
    params = {"ids": bound_list(sorted(set(user_ids)), dialect), "model": model}
    return _PENDING_EVENTS[dialect].all_in(session, params)


def add_pending(session: Session, events: Sequence[tuple[str, int]]) -> None:
    """List (event id, internal user id) pairs as stored but not in their profiles yet."""
    if events:
        _ADD_PENDING.executemany(
            session,
            [{"pending_event_id": e, "pending_user_id": u} for e, u in events],
        )


def clear_pending(session: Session, user_ids: Iterable[int]) -> None:
    """Forget these users' pending events: their profiles now hold them (a fold or a rebuild
    from the log under the users' profile locks)."""
    wanted = sorted(set(user_ids))
    if not wanted:
        return
    table = PendingEvent.__table__
    connection = session.connection()
    connection.execute(
        delete(table).where(in_list(table.c.user_id, "ids", connection.dialect.name)),
        {"ids": wanted},
    )


def lock_users(session: Session, ids: Iterable[int]) -> set[int]:
    """The ids of these users that exist, their rows locked for the transaction (PostgreSQL),
    in id order. Bulk import batches, their profile folds and profile rebuilds take these locks
    first, so that each of them sees the others' work whole (see `mark_profiles_stale`); event
    inserts (key-share locks) are not blocked by them."""
    wanted = sorted(set(ids))
    if not wanted:
        return set()
    connection = session.connection()
    return set(connection.scalars(_lock_users_statement(connection.dialect.name), {"ids": wanted}))


@functools.cache
def _lock_users_statement(dialect: str) -> Select[Any]:
    users = User.__table__.c
    stmt = select(users.id).where(in_list(users.id, "ids", dialect)).order_by(users.id)
    return stmt.with_for_update(key_share=True) if dialect == "postgresql" else stmt


def mark_profiles_stale(
    session: Session, user_ids: Iterable[int], import_id: str, batch: int = 0
) -> None:
    """Record that events import ``import_id`` stored, from its batch ``batch`` on, are not in
    these users' profiles yet (see `store.models.StaleProfile`); a user marked already keeps
    the earlier batch. The caller holds the users' locks (`lock_users`)."""
    wanted = sorted(set(user_ids))
    if not wanted:
        return
    connection = session.connection()
    # A user in several batches of one import is marked once. Driver-level statements: a
    # batch marks thousands of users, and SQLAlchemy's per-row parameter handling cost more
    # than the inserts.
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(
            "INSERT INTO stale_profiles (user_id, import_id, since_batch) "
            "SELECT unnest(%s::bigint[]), %s, %s ON CONFLICT DO NOTHING",
            (wanted, import_id, batch),
        )
    else:
        connection.exec_driver_sql(
            "INSERT INTO stale_profiles (user_id, import_id, since_batch) VALUES (?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            [(user_id, import_id, batch) for user_id in wanted],
        )


def marked_users(session: Session, user_ids: Sequence[int], import_id: str) -> dict[int, int]:
    """{user: the first batch not in the profile} of these users that import ``import_id``
    marked and nothing has cleared since."""
    stale = StaleProfile.__table__.c
    connection = session.connection()
    statement = select(stale.user_id, stale.since_batch).where(
        stale.import_id == bindparam("import_id"),
        in_list(stale.user_id, "ids", connection.dialect.name),
    )
    rows = connection.execute(statement, {"ids": list(user_ids), "import_id": import_id})
    return {user_id: since for user_id, since in rows}


def clear_stale_marks(
    session: Session, user_ids: Sequence[int], import_id: str | None = None
) -> None:
    """Drop the marks of these users: those of ``import_id``, or all (before a rebuild from the
    event log, which then holds every stored event). The caller holds the users' locks."""
    if not user_ids:
        return
    stale = StaleProfile.__table__
    connection = session.connection()
    stmt = delete(stale).where(in_list(stale.c.user_id, "ids", connection.dialect.name))
    if import_id is not None:
        stmt = stmt.where(stale.c.import_id == import_id)
    connection.execute(stmt, {"ids": list(user_ids)})


def stale_profile_user_ids(session: Session) -> set[int]:
    """Users whose profiles a bulk import (perhaps a killed one) left for the rebuild."""
    return set(session.scalars(select(StaleProfile.__table__.c.user_id)))


def sample_profile_rows(session: Session, n: int, *, max_events: int) -> list[Row]:
    """The state columns of ``n`` non-empty profiles of users with at most ``max_events``
    events, spread evenly over user ids: the same users each time while they exist, so that
    two reindexes of one catalogue calibrate on the same queries."""
    profiles = Profile.__table__.c
    candidates = list(
        session.scalars(
            select(profiles.user_id)
            .where(profiles.event_count > 0, profiles.event_count <= max_events)
            .order_by(profiles.user_id)
        )
    )
    if len(candidates) > n:
        step = len(candidates) / n
        candidates = [candidates[int(i * step)] for i in range(n)]
    if not candidates:
        return []
    return list(
        session.execute(
            select(*(profiles[name] for name in PROFILE_STATE_COLUMNS))
            .where(profiles.user_id.in_(candidates))
            .order_by(profiles.user_id)
        )
    )


def get_profile(session: Session, user_id: int) -> Profile | None:
    return session.get(Profile, user_id)


def user_events(
    session: Session, user_id: int, *, newest_first: bool = False, limit: int | None = None
) -> list[Event]:
    order = (
        (Event.timestamp.desc(), Event.id.desc()) if newest_first else (Event.timestamp, Event.id)
    )
    stmt = select(Event).where(Event.user_id == user_id).order_by(*order)
    if limit is not None:
        stmt = stmt.limit(limit)
    return list(session.scalars(stmt))


def seen_item_ids(session: Session, user_id: int) -> set[int]:
    return set(session.connection().scalars(_SEEN_ITEM_IDS, {"user_id": user_id}))


def item_ids_with_event_types(session: Session, user_id: int, types: Sequence[str]) -> set[int]:
    """Items the user has an event of one of ``types`` on (e.g. hidden or disliked items)."""
    events = Event.__table__.c
    return set(
        session.scalars(
            select(events.item_id)
            .where(events.user_id == user_id, events.type.in_(list(types)))
            .distinct()
        )
    )


@dataclass(frozen=True)
class EventColumns:
    """Events as columns, in (user id, timestamp, id) order: what a rebuild folds."""

    user_ids: np.ndarray  # int64
    item_ids: np.ndarray  # int64
    types: list[str]
    values: list[float | None]
    times: np.ndarray  # float64 epoch seconds, exact to the microsecond

    def __len__(self) -> int:
        return len(self.user_ids)

    def user_starts(self) -> np.ndarray:
        """Where each user's events begin (the columns are grouped by user)."""
        return np.flatnonzero(np.r_[True, self.user_ids[1:] != self.user_ids[:-1]])

    def take(self, index: np.ndarray | slice) -> EventColumns:
        """The events at ``index`` (positions or a slice), in that order."""
        if isinstance(index, slice):
            return EventColumns(
                self.user_ids[index],
                self.item_ids[index],
                self.types[index],
                self.values[index],
                self.times[index],
            )
        positions = index.tolist()
        return EventColumns(
            self.user_ids[index],
            self.item_ids[index],
            [self.types[i] for i in positions],
            [self.values[i] for i in positions],
            self.times[index],
        )

    @classmethod
    def concatenate(cls, parts: Sequence[EventColumns]) -> EventColumns:
        return cls(
            np.concatenate([part.user_ids for part in parts]),
            np.concatenate([part.item_ids for part in parts]),
            [kind for part in parts for kind in part.types],
            [value for part in parts for value in part.values],
            np.concatenate([part.times for part in parts]),
        )


def user_event_columns(session: Session, user_ids: Sequence[int]) -> EventColumns:
    """The events of the given users as columns; for rebuilding many profiles.

    Plain driver rows (no per-row type processing, no datetime object per row): timestamps
    arrive as epoch seconds on PostgreSQL (extract is exact before the cast) and as SQLite's
    stored text, which numpy parses in C to the microsecond.
    """
    connection = session.connection()
    sqlite = connection.dialect.name == "sqlite"
    # The ids are integers we render ourselves: one statement whatever their number.
    ids = ",".join(str(int(user_id)) for user_id in user_ids) or "NULL"
    stamp = "timestamp" if sqlite else "CAST(EXTRACT(EPOCH FROM timestamp) AS float8)"
    rows = connection.exec_driver_sql(
        f"SELECT user_id, item_id, type, value, {stamp} FROM events WHERE user_id IN ({ids}) "
        "ORDER BY user_id, timestamp, id"
    ).all()
    if not rows:
        empty = np.empty(0, dtype=np.int64)
        return EventColumns(empty, empty, [], [], np.empty(0, dtype=np.float64))
    users, items, types, values, stamps = zip(*rows, strict=True)
    if sqlite:
        # "YYYY-MM-DD HH:MM:SS.ffffff" UTC (`store.types.utc_bind_processor`); one correctly rounded
        # division per value, as datetime.timestamp() does.
        times = np.array(stamps, dtype="datetime64[us]").astype(np.int64) / 1e6
    else:
        times = np.array(stamps, dtype=np.float64)
    return EventColumns(
        np.array(users, dtype=np.int64),
        np.array(items, dtype=np.int64),
        list(types),
        list(values),
        times,
    )


def event_log(session: Session) -> list[tuple[int, int, str, float | None, datetime]]:
    """Every event as (user id, item id, type, value, timestamp), in time order."""
    rows = session.execute(
        select(Event.user_id, Event.item_id, Event.type, Event.value, Event.timestamp).order_by(
            Event.timestamp, Event.item_id, Event.id
        )
    )
    return [tuple(row) for row in rows]  # type: ignore[misc]


def popular_item_ids(
    session: Session, *, since: datetime | None = None, limit: int = 1000
) -> list[tuple[int, int]]:
    """(item id, event count) in decreasing count, optionally only counting events since a time."""
    stmt = select(Event.item_id, func.count().label("n")).group_by(Event.item_id)
    if since is not None:
        stmt = stmt.where(Event.timestamp >= since)
    stmt = stmt.order_by(func.count().desc(), Event.item_id).limit(limit)
    return [(item_id, count) for item_id, count in session.execute(stmt)]


def count_events(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Event))
