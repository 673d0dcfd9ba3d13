"""Rebuild profiles from the event log, and verify stored profiles against it.

Used after bulk imports, after changing decay settings, and by `driftrec verify`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from tqdm import tqdm

from interest.ingest import ProfileConfig, fold_rows, raw_vectors
from interest.profile import ProfileState, state_from_row, state_values
from store.db import Database
from store.events import (
    clear_stale_marks,
    get_profile,
    insert_profiles,
    iter_events_by_user,
    lock_profile_rows,
    stale_profile_user_ids,
    update_profiles,
    user_event_rows,
)
from store.models import User

log = logging.getLogger(__name__)

#: Users per write transaction: bounds memory and how long other writers wait on the lock.
REBUILD_BATCH_USERS = 1_000


def state_from_events(
    events: Iterable[Any], vectors: dict[int, np.ndarray], config: ProfileConfig
) -> ProfileState:
    """The profile of these events (anything with item_id, type, value, timestamp)."""
    state = ProfileState.empty(config.half_lives, config.dim)
    fold_rows(state, list(events), config, vectors)
    return state


def _vectors_for(db: Database, events: list[Any], embedder_model: str) -> dict[int, np.ndarray]:
    with db.read() as session:
        return raw_vectors(session, list({e.item_id for e in events}), embedder_model)


def rebuild_profiles(
    db: Database,
    config: ProfileConfig,
    embedder_model: str,
    *,
    user_ids: set[int] | None = None,
    progress: bool = False,
    batch_users: int = REBUILD_BATCH_USERS,
) -> int:
    """Recompute profiles from stored events (all users, or ``user_ids``), one write
    transaction per batch of users; returns the count.

    Each batch locks its profile rows before reading its events, so events ingested meanwhile
    are either in the rebuilt state or applied on top of it afterwards: none is lost.
    """
    with db.read() as session:
        total = (
            len(user_ids)
            if user_ids is not None
            else session.scalar(select(func.count()).select_from(User))
        )
    bar = tqdm(total=total, desc="profiles", unit="user", disable=not progress)
    rebuilt = 0
    for batch in _user_batches(db, user_ids, batch_users):
        work = partial(_rebuild_batch, users=batch, config=config, model=embedder_model)
        rebuilt += db.run_write(work)
        bar.update(len(batch))
    bar.close()
    log.info("profiles rebuilt users=%d", rebuilt)
    return rebuilt


def rebuild_stale_profiles(
    db: Database, config: ProfileConfig, embedder_model: str, *, progress: bool = False
) -> int:
    """Rebuild the profiles bulk imports marked stale (`store.models.StaleProfile`): after an
    import, its users, and those of any killed import before it."""
    with db.read() as session:
        stale = stale_profile_user_ids(session)
    if not stale:
        return 0
    return rebuild_profiles(db, config, embedder_model, user_ids=stale, progress=progress)


def _user_batches(db: Database, only: set[int] | None, size: int) -> Iterator[list[int]]:
    """Sorted batches of user ids: ``only``, or every user (paged by id, never all in memory)."""
    if only is not None:
        wanted = sorted(only)
        for start in range(0, len(wanted), size):
            yield wanted[start : start + size]
        return
    last = 0
    while True:
        with db.read() as session:
            batch = list(
                session.scalars(select(User.id).where(User.id > last).order_by(User.id).limit(size))
            )
        if not batch:
            return
        yield batch
        last = batch[-1]


def _rebuild_batch(session: Session, users: list[int], config: ProfileConfig, model: str) -> int:
    with_rows = lock_profile_rows(session, users, state=False)
    clear_stale_marks(session, users)  # before reading the events (see its docstring)
    # Users deleted since the batch was listed are skipped (a profile needs its user).
    live = set(session.scalars(select(User.id).where(User.id.in_(users))))
    users = [uid for uid in users if uid in live]
    states = _states(session, users, config, model)
    update_profiles(session, [{"user_id": uid, **state_values(states[uid])} for uid in with_rows])
    missing = [uid for uid in users if uid not in with_rows]
    if missing:
        created = insert_profiles(
            session, [{"user_id": uid, **state_values(states[uid])} for uid in missing]
        )
        # A concurrent ingest created the profile after our read of its events: lock it now
        # and rebuild it from a fresh read, which sees that ingest's events.
        raced = [uid for uid in missing if uid not in created]
        if raced:
            lock_profile_rows(session, raced, state=False)
            again = _states(session, raced, config, model)
            update_profiles(
                session, [{"user_id": uid, **state_values(again[uid])} for uid in raced]
            )
    return len(users)


def _states(
    session: Session, users: Sequence[int], config: ProfileConfig, model: str
) -> dict[int, ProfileState]:
    events = user_event_rows(session, users)
    vectors = raw_vectors(
        session, list({e.item_id for rows in events.values() for e in rows}), model
    )
    return {uid: state_from_events(events.get(uid, ()), vectors, config) for uid in users}


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
