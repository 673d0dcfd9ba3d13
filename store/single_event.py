"""One event of a known user who has a profile, without holding the profile's lock while it is
read and folded: a read of what the event names, then a write of the folded profile together
with the event, if the profile is still the version read (optimistic concurrency: a writer that
lost the race changes nothing and reads again).

A single event through the locking transaction (`interest.ingest`) reads its targets and the
locked profile, folds, and writes, all inside the transaction:
- On PostgreSQL that is six round trips (BEGIN, the targets' read, the insert, the profile's
  ``SELECT ... FOR UPDATE``, its UPDATE and COMMIT), the profile locked across three. Through a
  server a worker spent 64% of its wall time waiting over them (py-spy, 20 s closed loop). Here
  it is two statements, each a transaction of its own: the write is a data-modifying CTE that
  updates the profile (``WHERE version = v``) and an INSERT that takes its user id from the
  CTE's RETURNING, so the event is stored exactly when the profile took it.
- On SQLite, which admits one writer at a time, the read and the fold move out of the write
  lock: the write transaction holds only the profile's UPDATE and the event's INSERT.

Either way an event id stored already (a client's retry, or another writer meanwhile) makes
the INSERT fail with a unique violation, the profile's update goes with it, and the write reports
a duplicate. The read does not look for the id first: the unique index decides, whatever plan the
database would pick for a lookup. (An ``EXISTS`` on the id in the read was planned, on a
PostgreSQL connection that prepared it just after its events table was vacuumed empty, as a
sequential scan, one per event, ever longer as the table grew: 5-6 ms of PostgreSQL's CPU an
event after 30,000 of them.)
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import UniqueConstraint, bindparam, insert, select, true
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from store.db import Database
from store.direct_read import DirectRead, DirectWrite
from store.events import PROFILE_STATE_COLUMNS, EventRow, profile_update
from store.items import live_item_select
from store.models import Event, Profile, User
from store.types import require_aware, utcnow

_ITEM = live_item_select("external_item_id").subquery("item")
_TARGET_READ = DirectRead(
    select(
        *(Profile.__table__.c[name] for name in PROFILE_STATE_COLUMNS),
        _ITEM.c.id.label("item_id"),
        _ITEM.c.vector,
    )
    .select_from(User.__table__.join(Profile.__table__).outerjoin(_ITEM, true()))
    .where(User.__table__.c.external_id == bindparam("external_user_id")),
    "external_user_id",
    "external_item_id",
    "model",
    binary=True,
)


def single_event_target(
    db: Database, external_user_id: str, external_item_id: str, model: str
) -> Any | None:
    """What one event names, in one statement of its own: the user's profile (its state
    columns and version, `store.events.PROFILE_STATE_COLUMNS`) and the item's internal id and
    vector (`store.items.live_item_select`: both None for an unknown or deleted item, the
    vector None unless current for ``model``). None for an unknown user or one without a
    profile."""
    return _TARGET_READ.first(
        db,
        {
            "external_user_id": external_user_id,
            "external_item_id": external_item_id,
            "model": model,
        },
    )


class Written(enum.Enum):
    """What `write_single_event` did."""

    #: The profile and the event, both.
    EVENT = "event"
    #: Nothing: the profile is not the version read (another writer changed or deleted it).
    PROFILE_CHANGED = "profile changed"
    #: Nothing: the event id is stored already.
    DUPLICATE = "duplicate"


#: The events' columns the write binds, besides the user id.
_EVENT_VALUES = ("event_id", "item_id", "type", "value", "timestamp", "recomm_id", "received_at")
_EVENT_PARAMS = tuple(f"event_{name}" for name in _EVENT_VALUES)
_PROFILE_PARAMS = ("profile_user_id", "profile_version", "profile_updated_at")


def _event_values() -> list[Any]:
    # Typed parameters: psycopg's casts (``::FLOAT``) let a NULL value or recomm_id through.
    events = Event.__table__
    return [
        bindparam(param, type_=events.c[name].type)
        for name, param in zip(_EVENT_VALUES, _EVENT_PARAMS, strict=True)
    ]


def _versioned_update(columns: tuple[str, ...]) -> Any:
    profiles = Profile.__table__
    return profile_update(columns).where(profiles.c.version == bindparam("profile_version"))


@functools.cache
def _write_postgresql(columns: tuple[str, ...]) -> DirectWrite:
    """The profile's versioned UPDATE as a CTE; the event's INSERT of its RETURNING rows."""
    events = Event.__table__
    updated = _versioned_update(columns).returning(Profile.__table__.c.user_id).cte("updated")
    return DirectWrite(
        insert(events)
        .from_select(["user_id", *_EVENT_VALUES], select(updated.c.user_id, *_event_values()))
        .returning(events.c.event_id),
        *columns,
        *_PROFILE_PARAMS,
        *_EVENT_PARAMS,
    )


@functools.cache
def _update_sqlite(columns: tuple[str, ...]) -> DirectWrite:
    return DirectWrite(_versioned_update(columns), *columns, *_PROFILE_PARAMS)


_INSERT_SQLITE = DirectWrite(
    insert(Event.__table__).values(
        user_id=bindparam("profile_user_id"),
        **dict(zip(_EVENT_VALUES, _event_values(), strict=True)),
    ),
    "profile_user_id",
    *_EVENT_PARAMS,
)


def write_single_event(
    db: Database, event: EventRow, profile: Mapping[str, Any], version: int
) -> Written:
    """Write ``profile`` (column values, `store.events.update_profiles`'s) over the event's
    user's profile and insert the event, in one transaction, if the profile is still at
    ``version`` and the event id is new; else write nothing and say why. Any other integrity
    error (the item or user removed meanwhile) is raised, with nothing written."""
    timestamp: datetime = event.timestamp
    require_aware(timestamp)  # PostgreSQL would read a naive one in its own zone
    now = utcnow()
    row = {
        **profile,
        "profile_user_id": event.user_id,
        "profile_version": version,
        "profile_updated_at": now,
        "event_event_id": event.event_id,
        "event_item_id": event.item_id,
        "event_type": event.type,
        "event_value": event.value,
        "event_timestamp": timestamp,
        "event_recomm_id": event.recomm_id,
        "event_received_at": now,
    }
    columns = tuple(profile)

    def write_sqlite(session: Session) -> bool:
        if _update_sqlite(columns).executemany(session, [row]) == 0:
            return False
        _INSERT_SQLITE.executemany(session, [row])  # a unique violation rolls both back
        return True

    try:
        if db.dialect == "postgresql":
            written = bool(_write_postgresql(columns).execute_alone(db, row))
        else:
            written = db.run_write(write_sqlite)
    except IntegrityError as exc:
        if _event_id_taken(exc):
            return Written.DUPLICATE
        raise
    return Written.EVENT if written else Written.PROFILE_CHANGED


#: The unique constraint on the events' event id, by the name the migrations gave it.
_EVENT_ID_UNIQUE = next(
    str(constraint.name)
    for constraint in Event.__table__.constraints
    if isinstance(constraint, UniqueConstraint)
    and [column.name for column in constraint.columns] == ["event_id"]
)


def _event_id_taken(exc: IntegrityError) -> bool:
    """The error is the events' unique event id refusing a second row."""
    error = exc.orig
    diag = getattr(error, "diag", None)  # psycopg's error fields
    if diag is not None:
        return diag.constraint_name == _EVENT_ID_UNIQUE
    return "UNIQUE constraint failed: events.event_id" in str(error)  # SQLite's message
