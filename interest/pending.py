"""Events stored but not yet folded into their users' stored profiles.

An event on a user who has a profile is listed in ``pending_events`` (`store.models.
PendingEvent`) instead of rewriting the profile, while the user has at most ``pending_max``
of them (`interest.ingest.apply_to_profiles`); whoever reads a profile to use or check it folds
that user's pending events into the stored state, consistently with it, so every reader sees
every acknowledged event.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.orm import Session

from interest.ingest import ProfileConfig, fold_rows, pending_vectors
from interest.profile import ProfileState, state_from_row
from store.db import Database
from store.events import pending_events, profile_rows, user_pending_events


def fold_pending(
    session: Session,
    states: Mapping[int, ProfileState],
    *,
    buffer_size: int,
    event_weights: Mapping[str, float],
    embedder_model: str,
) -> None:
    """Fold the pending events of these users (by internal id) into their stored states, read
    in the session's snapshot, with their items' current vectors, as ingestion would have."""
    if states:
        events = pending_events(session, states, embedder_model)
        _fold(states, events, buffer_size, event_weights)


def state_with_pending(
    db: Database,
    row: Any,
    *,
    buffer_size: int,
    event_weights: Mapping[str, float],
    embedder_model: str,
) -> ProfileState | None:
    """The state of a profile row read by `store.events.profile_by_external_id` (which counted
    pending events on it) with those events folded in; None when the user has gone since.

    The events come in a second statement with the profile's version: the same version means
    no fold, rebuild or merge committed between the two reads, so the events are exactly those
    the row lacks. Otherwise both are read again in one snapshot (the rare case: a user's
    profile is folded once per ``pending_max + 1`` of their events).
    """
    version, events = user_pending_events(db, row.user_id, embedder_model)
    if events and version == row.profile_version:
        state = state_from_row(row)
        _fold({row.user_id: state}, events, buffer_size, event_weights)
        return state
    with db.snapshot() as session:
        stored = profile_rows(session, [row.user_id]).get(row.user_id)
        if stored is None:
            return None
        state = state_from_row(stored)
        fold_pending(
            session,
            {row.user_id: state},
            buffer_size=buffer_size,
            event_weights=event_weights,
            embedder_model=embedder_model,
        )
        return state


def _fold(
    states: Mapping[int, ProfileState],
    events: Sequence[Any],
    buffer_size: int,
    event_weights: Mapping[str, float],
) -> None:
    by_user: dict[int, list[Any]] = {}
    for event in events:
        by_user.setdefault(event.user_id, []).append(event)
    vectors = pending_vectors(events)
    for user_id, mine in by_user.items():
        state = states[user_id]
        config = ProfileConfig(state.half_lives, state.dim, buffer_size, event_weights)
        fold_rows(state, mine, config, vectors)
