"""One event of a known user who has a profile, on PostgreSQL, in two statements that are each
a transaction of their own: a read of what the event names, then one statement that writes the
folded profile and inserts the event together, if the profile is still the version read.

A single event through the locking transaction (`interest.ingest`) takes six round trips:
BEGIN, the targets' read, the insert, the profile's ``SELECT ... FOR UPDATE``, its UPDATE and
COMMIT. Through a server, a worker spent 64% of its wall time waiting over them (py-spy, 20 s
closed loop), and each profile stayed locked across three of them. Here the profile is read
without a lock and written back only where its version is unchanged (optimistic concurrency):
a writer that lost the race changes nothing and reads again.

The write is one statement: a data-modifying CTE updates the profile (``WHERE version = v``)
and the INSERT takes its user id from the CTE's RETURNING, so the event is stored exactly when
the profile took it. If the event id was stored meanwhile, the INSERT's unique violation fails
the whole statement, profile update included. SQLite has no data-modifying CTEs, and its
write transaction runs in process, without round trips: it keeps the locking path.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, exists, insert, select, true

from store.db import Database
from store.dialect import bound_list
from store.direct_read import DirectRead, DirectWrite
from store.events import PROFILE_STATE_COLUMNS, EventRow, profile_update
from store.items import live_items_select
from store.models import Event, Profile, User
from store.types import require_aware, utcnow


@functools.cache
def _target_read() -> DirectRead:
    users, profiles, events = User.__table__, Profile.__table__, Event.__table__
    item = live_items_select("postgresql", "item_ids").subquery("item")
    return DirectRead(
        select(
            *(profiles.c[name] for name in PROFILE_STATE_COLUMNS),
            item.c.id.label("item_id"),
            item.c.vector,
            exists().where(events.c.event_id == bindparam("event_id")).label("duplicate"),
        )
        .select_from(users.join(profiles).outerjoin(item, true()))
        .where(users.c.external_id == bindparam("external_user_id")),
        "external_user_id",
        "item_ids",
        "model",
        "event_id",
        binary=True,
    )


def single_event_target(
    db: Database, event_id: str, external_user_id: str, external_item_id: str, model: str
) -> Any | None:
    """What one event names, in one statement of its own: the user's profile (its state
    columns and version, `store.events.PROFILE_STATE_COLUMNS`), the item's internal id and
    vector (`store.items.live_items_select`: both None for an unknown or deleted item, the
    vector None unless current for ``model``) and whether the event id is stored already
    (``duplicate``). None for an unknown user or one without a profile."""
    return _target_read().first(
        db,
        {
            "external_user_id": external_user_id,
            "item_ids": bound_list([external_item_id], "postgresql"),
            "model": model,
            "event_id": event_id,
        },
    )


#: The events' columns the write binds (the user id comes from the profile's update).
_EVENT_VALUES = ("event_id", "item_id", "type", "value", "timestamp", "recomm_id", "received_at")


@functools.cache
def _write(columns: tuple[str, ...]) -> DirectWrite:
    profiles, events = Profile.__table__, Event.__table__
    updated = (
        profile_update(columns)
        .where(profiles.c.version == bindparam("profile_version"))
        .returning(profiles.c.user_id)
        .cte("updated")
    )
    # Typed parameters: psycopg's casts (``::FLOAT``) let a NULL value or recomm_id through.
    values = [bindparam(f"event_{name}", type_=events.c[name].type) for name in _EVENT_VALUES]
    return DirectWrite(
        insert(events)
        .from_select(["user_id", *_EVENT_VALUES], select(updated.c.user_id, *values))
        .returning(events.c.event_id),
        *columns,
        "profile_user_id",
        "profile_version",
        "profile_updated_at",
        *(f"event_{name}" for name in _EVENT_VALUES),
    )


def write_single_event(
    db: Database, event: EventRow, profile: Mapping[str, Any], version: int
) -> bool:
    """Write ``profile`` (column values, `store.events.update_profiles`'s) over the event's
    user's profile and insert the event, in one statement that is its own transaction, if the
    profile is still at ``version``; False, with nothing written, if it is not (another writer
    changed or deleted it). An event id stored meanwhile raises `sqlalchemy.exc.IntegrityError`,
    with nothing written either."""
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
    return bool(_write(tuple(profile)).execute_alone(db, row))
