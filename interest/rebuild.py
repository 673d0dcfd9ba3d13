"""Rebuild profiles from the event log, and verify stored profiles against it.

Used after bulk imports, after changing decay settings, and by `driftrec verify`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import func, select
from tqdm import tqdm

from interest.ingest import ProfileConfig, event_weight, raw_vectors
from interest.profile import ProfileState, new_row, state_from_row, write_state
from store.db import Database
from store.events import get_profile, iter_events_by_user, iter_user_batches
from store.models import Event, User

log = logging.getLogger(__name__)


def state_from_events(
    events: Iterable[Event], vectors: dict[int, np.ndarray], config: ProfileConfig
) -> ProfileState:
    state = ProfileState.empty(config.half_lives, config.dim)
    zero = np.zeros(config.dim, dtype=np.float32)
    for event in sorted(events, key=lambda e: (e.timestamp, e.item_id)):
        state.apply(
            vectors.get(event.item_id, zero),
            event_weight(config.event_weights, event.type, event.value),
            event.timestamp.timestamp(),
            event.item_id,
            config.buffer_size,
        )
    return state


def _vectors_for(db: Database, events: list[Event], embedder_model: str) -> dict[int, np.ndarray]:
    with db.read() as session:
        return raw_vectors(session, list({e.item_id for e in events}), embedder_model)


def rebuild_profiles(
    db: Database,
    config: ProfileConfig,
    embedder_model: str,
    *,
    user_ids: set[int] | None = None,
    progress: bool = False,
) -> int:
    """Recompute profiles from stored events (all users, or ``user_ids``), committing per batch
    of users; returns the count. Reads, and holds in memory, one batch of users at a time."""
    with db.read() as session:
        total = (
            len(user_ids)
            if user_ids is not None
            else session.scalar(select(func.count()).select_from(User))
        )
    bar = tqdm(total=total, desc="profiles", unit="user", disable=not progress)
    rebuilt = 0
    with db.read() as session:
        for batch in iter_user_batches(session, only=user_ids):
            vectors = raw_vectors(
                session,
                list({e.item_id for events in batch.values() for e in events}),
                embedder_model,
            )
            states = [
                (user_id, state_from_events(events, vectors, config))
                for user_id, events in batch.items()
            ]
            rebuilt += _write_states(db, states)
            bar.update(len(batch))
    bar.close()
    log.info("profiles rebuilt users=%d", rebuilt)
    return rebuilt


def _write_states(db: Database, states: list[tuple[int, ProfileState]]) -> int:
    if not states:
        return 0

    def work(session) -> int:  # type: ignore[no-untyped-def]
        for user_id, state in states:
            row = get_profile(session, user_id)
            if row is None:
                session.add(new_row(user_id, state))
            else:
                write_state(row, state)
        session.flush()
        return len(states)

    return db.run_write(work)


@dataclass
class VerifyReport:
    checked: int = 0
    drifted: list[tuple[int, float]] = field(default_factory=list)  # (user id, max abs error)


def verify_profiles(
    db: Database, config: ProfileConfig, embedder_model: str, *, tolerance: float = 1e-5
) -> VerifyReport:
    """Compare every stored profile with the one rebuilt from its events."""
    report = VerifyReport()
    with db.read() as session:
        batches = list(iter_events_by_user(session))
    vectors = _vectors_for(db, [e for _, events in batches for e in events], embedder_model)
    with db.read() as session:
        for user_id, events in batches:
            row = get_profile(session, user_id)
            expected = state_from_events(events, vectors, config)
            report.checked += 1
            if row is None:
                if events:
                    report.drifted.append((user_id, float("inf")))
                continue
            stored = state_from_row(row)
            if stored.accumulators.shape != expected.accumulators.shape:
                report.drifted.append((user_id, float("inf")))
                continue
            error = _relative_error(stored, expected)
            if error > tolerance or stored.event_count != expected.event_count:
                report.drifted.append((user_id, error))
    return report


def _relative_error(a: ProfileState, b: ProfileState) -> float:
    """Largest difference between the two profiles' accumulators, relative to their scale."""
    ref = max(a.ref_time, b.ref_time)
    acc_a, acc_b = a.accumulators_at(ref), b.accumulators_at(ref)
    scale = max(1.0, float(np.abs(acc_b).max(initial=0.0)))
    return float(np.abs(acc_a - acc_b).max(initial=0.0)) / scale
