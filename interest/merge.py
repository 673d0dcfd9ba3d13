"""Join an anonymous user's history into a signed-in user's profile, in one transaction.

The anonymous user's events move to the target user (event ids stay unique, so a retried merge
finds nothing left to move), the target's profile is rebuilt from its now longer event log, and
the anonymous user and profile are deleted. Open recommendation sessions follow the user.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from interest.errors import InterestError
from interest.ingest import ProfileConfig, raw_vectors
from interest.profile import new_row, write_state
from interest.rebuild import state_from_events
from store.db import Database
from store.events import (
    clear_pending,
    clear_stale_marks,
    ensure_users,
    lock_profiles,
    lock_users,
    user_events,
)
from store.models import Event, Profile, RecommendationSession, User

log = logging.getLogger(__name__)


class SameUser(InterestError, ValueError):
    """A user cannot be merged into itself."""


@dataclass(frozen=True)
class MergeResult:
    merged: bool  # False: the source user did not exist (unknown, or merged already)
    moved_events: int
    event_count: int  # the target's events after the merge


def merge_users(
    db: Database, source: str, target: str, config: ProfileConfig, embedder_model: str
) -> MergeResult:
    if source == target:
        raise SameUser(f"cannot merge user {source!r} into itself")

    def work(session: Session) -> MergeResult:
        return _merge(session, source, target, config, embedder_model)

    result = db.run_write(work)
    log.info(
        "users merged merged=%s moved_events=%d event_count=%d",
        result.merged,
        result.moved_events,
        result.event_count,
    )
    return result


def _merge(
    session: Session, source: str, target: str, config: ProfileConfig, embedder_model: str
) -> MergeResult:
    from_id = session.scalar(select(User.id).where(User.external_id == source))
    if from_id is None:  # unknown, or merged already: nothing to do, nothing created
        into_id = session.scalar(select(User.id).where(User.external_id == target))
        count = len(user_events(session, into_id)) if into_id is not None else 0
        return MergeResult(False, 0, count)
    into_id = ensure_users(session, [target])[target]
    lock_users(session, [from_id, into_id])  # first, as every profile writer of imports does
    profiles = lock_profiles(session, [from_id, into_id])
    # The target's profile is rebuilt from its whole log below: an import's pending events
    # are in it, so its fold must not add them again.
    clear_stale_marks(session, [into_id])
    clear_pending(session, [from_id, into_id])  # both logs are in the rebuilt profile
    moved = session.execute(
        update(Event).where(Event.user_id == from_id).values(user_id=into_id)
    ).rowcount
    events = user_events(session, into_id)
    vectors = raw_vectors(session, list({e.item_id for e in events}), embedder_model)
    state = state_from_events(events, vectors, config)
    if into_id in profiles:
        write_state(profiles[into_id], state)
    else:
        session.add(new_row(into_id, state))
    session.execute(
        update(RecommendationSession)
        .where(RecommendationSession.user_external_id == source)
        .values(user_external_id=target)
    )
    if from_id in profiles:
        session.delete(profiles[from_id])
    session.flush()
    session.execute(delete(Profile).where(Profile.user_id == from_id))
    session.execute(delete(User).where(User.id == from_id))
    session.flush()
    return MergeResult(True, int(moved or 0), len(events))
