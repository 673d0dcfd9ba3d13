"""Recommendation sessions: what one request asked and which items it has answered so far.

They make pagination repeat nothing across workers (the state is in the database, not in a
process) and let events name the answer they came from (attribution by model version and
experiment arm). Functions take a `Session` and never commit. The server writes new sessions
off the request path (`service.session_writer`).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import String, bindparam, cast, delete, func, select, update
from sqlalchemy.orm import Session

from store.direct_read import DirectWrite
from store.errors import NotFound
from store.models import Event, RecommendationSession
from store.types import utcnow


def new_recomm_id() -> str:
    """32 hex digits: the issuing time in milliseconds (12), then 80 random bits (20), so that a
    reader can tell a just-issued id (whose row may not be written yet) from an unknown one."""
    return f"{int(time.time() * 1000) & 0xFFFF_FFFF_FFFF:012x}{secrets.token_hex(10)}"


def issued_at(recomm_id: str) -> float | None:
    """When `new_recomm_id` made ``recomm_id`` (epoch seconds); None for other shapes."""
    if len(recomm_id) != 32:
        return None
    try:
        return int(recomm_id[:12], 16) / 1000
    except ValueError:
        return None


def delete_user_sessions(session: Session, user_external_id: str) -> int:
    """Delete the answers given to a user (erasure); return how many. An answer still waiting
    in a server's session writer (`service.session_writer`, up to ~50 ms) is written after."""
    table = RecommendationSession.__table__
    result = session.execute(delete(table).where(table.c.user_external_id == user_external_id))
    return int(result.rowcount or 0)


def unanswered_recent_ids(session: Session, issued_since: float) -> set[str]:
    """``recomm_id``s on events that `new_recomm_id` issued since ``issued_since`` and that have
    no session row (yet). Its ids sort by issue time, so this is a range of the events'
    ``recomm_id`` index, not a scan."""
    events, sessions = Event.__table__.c, RecommendationSession.__table__.c
    floor = f"{int(issued_since * 1000) & 0xFFFF_FFFF_FFFF:012x}"
    rows = session.scalars(
        select(events.recomm_id)
        .distinct()
        .where(
            events.recomm_id >= floor,
            ~select(sessions.recomm_id).where(sessions.recomm_id == events.recomm_id).exists(),
        )
    )
    return {recomm_id for recomm_id in rows if issued_at(recomm_id) is not None}


#: Every column of the table: `session_row` binds them all.
_SESSION_COLUMNS = tuple(RecommendationSession.__table__.columns.keys())
#: Built once, run on the Session's DBAPI connection (`store.direct_read`): a server inserts a
#: row per answer, and through SQLAlchemy's Connection its executemany cost more CPU than the
#: commit.
_INSERT = DirectWrite(
    RecommendationSession.__table__.insert().values(
        {name: bindparam(name) for name in _SESSION_COLUMNS}
    ),
    *_SESSION_COLUMNS,
)


def session_row(
    *,
    recomm_id: str,
    user_external_id: str | None,
    params: dict[str, Any],
    shown: Sequence[int],
    strategy: str,
    model_version_id: int | None,
    arm: str | None,
    ttl_s: float,
) -> dict[str, Any]:
    """The parameters of one new session's INSERT (`insert_sessions` writes them)."""
    now = utcnow()
    return {
        "recomm_id": recomm_id,
        "user_external_id": user_external_id,
        "params": params,
        "shown": list(shown),
        "shown_count": len(shown),
        "strategy": strategy,
        "model_version_id": model_version_id,
        "arm": arm,
        "created_at": now,
        "expires_at": now + timedelta(seconds=ttl_s),
    }


def insert_sessions(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Insert new sessions (rows from `session_row`) in one driver call."""
    _INSERT.executemany(session, rows)


def get_session(
    session: Session, recomm_id: str, *, for_update: bool = False
) -> RecommendationSession:
    """The live session; `NotFound` when unknown or expired."""
    stmt = select(RecommendationSession).where(RecommendationSession.recomm_id == recomm_id)
    if for_update and session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    row = session.scalar(stmt)
    if row is None or row.expires_at <= utcnow():
        raise NotFound(f"recommendation {recomm_id!r} not found or expired")
    return row


def add_page(
    session: Session,
    recomm_id: str,
    item_ids: Sequence[int],
    *,
    after: Sequence[int],
    ttl_s: float,
) -> list[int] | None:
    """Append a page of answered items, computed when the answer had shown ``after``, and
    extend the expiry; None when done. When another request added a page since (the row no
    longer holds ``after``), nothing is written and the items shown now are returned: the
    caller computes its page again, so that concurrent next pages never repeat an item.
    The row is locked (``FOR UPDATE``; SQLite's write transaction) for the check and write."""
    row = get_session(session, recomm_id, for_update=True)
    if list(row.shown) != list(after):
        return list(row.shown)
    shown = [*after, *item_ids]
    row.shown = shown
    row.shown_count = len(shown)
    row.expires_at = utcnow() + timedelta(seconds=ttl_s)
    session.flush()
    return None


def clear_expired_requests(session: Session) -> int:
    """Empty the request (``params``: controls, an anonymous request's examples) and the items
    shown of sessions that have expired; return how many. Only
    `/next` reads them, and an expired answer has no next page; `/v1/stats` needs the rest of
    the row, which stays until `delete_expired`. An anonymous request's examples can be ~1 MB
    (100 vectors): kept for the whole stats window, a read key could fill the disk."""
    table = RecommendationSession.__table__
    result = session.execute(
        update(table)
        .where(
            table.c.expires_at < utcnow(),
            cast(table.c.params, String) != "{}",
        )
        .values(params={}, shown=[])
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def delete_expired(session: Session, *, before: datetime | None = None) -> int:
    """Remove sessions that expired before ``before`` (default now); returns how many."""
    moment = before or utcnow()
    result = session.execute(
        delete(RecommendationSession).where(RecommendationSession.expires_at < moment)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def attribution_counts(session: Session, since: datetime | None = None) -> list[dict[str, Any]]:
    """Per model version and arm: answers served, items shown, events attributed by type."""
    sessions = RecommendationSession.__table__.c
    events = Event.__table__.c
    served = select(
        sessions.model_version_id,
        sessions.arm,
        func.count().label("answers"),
        func.coalesce(func.sum(sessions.shown_count), 0).label("shown"),
    ).group_by(sessions.model_version_id, sessions.arm)
    attributed = (
        select(
            sessions.model_version_id,
            sessions.arm,
            events.type,
            func.count().label("events"),
            func.count(func.distinct(events.recomm_id)).label("answers_with_events"),
        )
        .select_from(
            Event.__table__.join(
                RecommendationSession.__table__, events.recomm_id == sessions.recomm_id
            )
        )
        .group_by(sessions.model_version_id, sessions.arm, events.type)
    )
    if since is not None:
        served = served.where(sessions.created_at >= since)
        attributed = attributed.where(sessions.created_at >= since)
    groups: dict[tuple[int | None, str | None], dict[str, Any]] = {}
    for model_version, arm, answers, shown in session.execute(served):
        groups[(model_version, arm)] = {
            "model_version": model_version,
            "arm": arm,
            "answers": int(answers),
            "items_shown": int(shown),
            "events": {},
        }
    for model_version, arm, kind, count, _ in session.execute(attributed):
        group = groups.get((model_version, arm))
        if group is not None:
            group["events"][kind] = int(count)
    return list(groups.values())
