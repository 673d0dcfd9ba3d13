"""Events stored but not yet folded into their users' stored profiles.

An event on a user who has a profile is listed in ``pending_events`` (`store.models.
PendingEvent`) instead of rewriting the profile, while the user has at most ``pending_max``
of them (`interest.ingest.apply_to_profiles`); whoever reads a profile to use or check it folds
that user's pending events into the stored state, read in the same snapshot, so every reader
sees every acknowledged event.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.orm import Session

from interest.ingest import ProfileConfig, fold_rows, pending_vectors
from interest.profile import ProfileState
from store.events import pending_events


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
    if not states:
        return
    by_user: dict[int, list[Any]] = {}
    for event in pending_events(session, states, embedder_model):
        by_user.setdefault(event.user_id, []).append(event)
    for user_id, events in by_user.items():
        fold_events(states[user_id], events, buffer_size, event_weights)


def fold_events(
    state: ProfileState,
    events: Sequence[Any],
    buffer_size: int,
    event_weights: Mapping[str, float],
) -> None:
    """Fold pending events as `store.events` reads them (each with its item's ``vector``
    bytes, or None) into ``state``."""
    config = ProfileConfig(state.half_lives, state.dim, buffer_size, event_weights)
    fold_rows(state, events, config, pending_vectors(events))
