"""Data access for users, events and profiles. Functions take a `Session` and never commit."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, func, select
from sqlalchemy.orm import Session

from store.dialect import insert_ignoring_conflicts
from store.errors import NotFound
from store.models import Event, Profile, User
from store.types import utcnow


@dataclass(frozen=True)
class EventRow:
    event_id: str
    user_id: int
    item_id: int
    type: str
    value: float | None
    timestamp: datetime
    recomm_id: str | None = None


def ensure_users(session: Session, external_ids: Iterable[str]) -> dict[str, int]:
    """Return internal ids for ``external_ids``, creating the users that do not exist yet."""
    wanted = sorted(set(external_ids))
    if not wanted:
        return {}
    now = utcnow()
    insert_ignoring_conflicts(
        session,
        User.__table__,
        [{"external_id": external_id, "created_at": now} for external_id in wanted],
        "external_id",
    )
    return user_ids(session, wanted)


def user_ids(session: Session, external_ids: Iterable[str]) -> dict[str, int]:
    wanted = list(set(external_ids))
    rows = session.execute(select(User.external_id, User.id).where(User.external_id.in_(wanted)))
    return {external_id: user_id for external_id, user_id in rows}


# The request path's statements are built once (a statement is immutable; reusing one skips
# building and cache-keying it) and run on the session's connection, past the ORM layer.
_PROFILE_BY_EXTERNAL_ID = (
    select(
        User.__table__.c.id.label("uid"),
        *(
            Profile.__table__.c[name]
            for name in (
                "user_id",
                "dim",
                "half_lives",
                "accumulators",
                "weight_sums",
                "ref_time",
                "recent",
                "event_count",
            )
        ),
    )
    .select_from(User.__table__.outerjoin(Profile.__table__))
    .where(User.__table__.c.external_id == bindparam("external_id"))
)
_SEEN_ITEM_IDS = (
    select(Event.__table__.c.item_id)
    .where(Event.__table__.c.user_id == bindparam("user_id"))
    .distinct()
)


def profile_by_external_id(session: Session, external_id: str) -> tuple[int | None, Any]:
    """(user id, profile columns) of a user in one query; (None, None) for an unknown user.

    The profile part is a row with the `Profile` columns that `interest.profile.state_from_row`
    reads (None when the user has no profile yet): no ORM object, as the read path wants.
    """
    row = (
        session.connection().execute(_PROFILE_BY_EXTERNAL_ID, {"external_id": external_id}).first()
    )
    if row is None:
        return None, None
    return row.uid, (row if row.user_id is not None else None)


def get_user(session: Session, external_id: str) -> User:
    user = session.scalar(select(User).where(User.external_id == external_id))
    if user is None:
        raise NotFound(f"user {external_id!r} not found")
    return user


def delete_user(session: Session, external_id: str) -> None:
    """Remove the user with their events and profile."""
    user = get_user(session, external_id)
    session.execute(delete(Event).where(Event.user_id == user.id))
    session.execute(delete(Profile).where(Profile.user_id == user.id))
    session.delete(user)
    session.flush()


def insert_events(session: Session, rows: Sequence[EventRow]) -> set[str]:
    """Insert events, skipping ids already stored; return the event ids actually inserted."""
    now = utcnow()
    inserted = insert_ignoring_conflicts(
        session,
        Event.__table__,
        [
            {
                "event_id": row.event_id,
                "user_id": row.user_id,
                "item_id": row.item_id,
                "type": row.type,
                "value": row.value,
                "timestamp": row.timestamp,
                "received_at": now,
                "recomm_id": row.recomm_id,
            }
            for row in rows
        ],
        "event_id",
        returning=("event_id",),
    )
    return {event_id for (event_id,) in inserted}


def lock_profiles(session: Session, ids: Iterable[int]) -> dict[int, Profile]:
    """Load profiles for update, locked in user-id order so concurrent writers cannot deadlock."""
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    stmt = select(Profile).where(Profile.user_id.in_(wanted)).order_by(Profile.user_id)
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    return {profile.user_id: profile for profile in session.scalars(stmt)}


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


def iter_user_batches(
    session: Session, *, only: Iterable[int] | None = None, batch_users: int = 500
) -> Iterator[dict[int, list[Event]]]:
    """Yield {user id: events in time order} for every user (or only ``only``), a batch of
    users at a time, so memory stays bounded by the batch."""
    wanted = sorted(set(only)) if only is not None else None
    last_user = 0
    while True:
        if wanted is not None:
            candidates = [u for u in wanted if u > last_user][:batch_users]
            if not candidates:
                return
            users = list(
                session.scalars(select(User.id).where(User.id.in_(candidates)).order_by(User.id))
            )
            last_user = candidates[-1]
            if not users:  # none of these exist (any more)
                continue
        else:
            users = list(
                session.scalars(
                    select(User.id).where(User.id > last_user).order_by(User.id).limit(batch_users)
                )
            )
            if not users:
                return
            last_user = users[-1]
        events = session.scalars(
            select(Event)
            .where(Event.user_id.in_(users))
            .order_by(Event.user_id, Event.timestamp, Event.id)
        )
        grouped: dict[int, list[Event]] = {user_id: [] for user_id in users}
        for event in events:
            grouped[event.user_id].append(event)
        yield grouped


def iter_events_by_user(
    session: Session, *, batch_users: int = 500
) -> Iterator[tuple[int, list[Event]]]:
    """Yield (user id, events in time order) for every user, a batch of users at a time."""
    for batch in iter_user_batches(session, batch_users=batch_users):
        yield from batch.items()


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
