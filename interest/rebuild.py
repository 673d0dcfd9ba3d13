"""Rebuild profiles from the event log, and verify stored profiles against it.

Used after bulk imports, after changing decay settings, and by `driftrec verify`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from tqdm import tqdm

from interest.ingest import ProfileConfig, event_weight, fold_rows, raw_vectors
from interest.pending import fold_pending
from interest.profile import ProfileState, state_from_row
from interest.state_block import StateBlock
from store.db import Database
from store.events import (
    EventColumns,
    clear_pending,
    clear_stale_marks,
    insert_profiles,
    lock_profile_rows,
    lock_users,
    profile_rows,
    stale_profile_user_ids,
    update_profiles,
    user_event_columns,
)
from store.models import User
from store.settings import VERIFY_TOLERANCE

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
    transaction per batch of users (`Database.run_writes`: two at once on PostgreSQL); returns
    the count.

    Each batch locks its profile rows before reading its events, so events ingested meanwhile
    are either in the rebuilt state or applied on top of it afterwards: none is lost. Item
    vectors are read once per run (an item re-embedded meanwhile keeps the vector the run
    first read, as if re-embedded after the run).
    """
    with db.read() as session:
        total = (
            len(user_ids)
            if user_ids is not None
            else session.scalar(select(func.count()).select_from(User))
        )
    bar = tqdm(total=total, desc="profiles", unit="user", disable=not progress)
    rebuilt = 0
    vectors = VectorCache(embedder_model)
    works = (
        partial(_rebuild_batch, users=batch, config=config, vectors=vectors)
        for batch in _user_batches(db, user_ids, batch_users)
    )
    for count in db.run_writes(works):  # batches of their own users: side by side (PostgreSQL)
        rebuilt += count
        bar.update(count)
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


def _rebuild_batch(
    session: Session, users: list[int], config: ProfileConfig, vectors: VectorCache
) -> int:
    # Users first (`store.events.lock_users`): import batches wait for this rebuild or it for
    # them. Users deleted since the batch was listed are skipped (a profile needs its user).
    live = lock_users(session, users)
    users = [uid for uid in users if uid in live]
    with_rows = lock_profile_rows(session, users, state=False)
    clear_stale_marks(session, users)  # the rebuild reads every stored event of theirs
    clear_pending(session, users)  # and so holds the pending ones (their rows are locked)
    states = _states(session, users, config, vectors)
    values = dict(zip(users, states.values(), strict=True))
    update_profiles(session, [values[uid] for uid in with_rows])
    missing = [uid for uid in users if uid not in with_rows]
    if missing:
        created = insert_profiles(session, [values[uid] for uid in missing])
        # A concurrent ingest created the profile after our read of its events: lock it now
        # and rebuild it from a fresh read, which sees that ingest's events.
        raced = [uid for uid in missing if uid not in created]
        if raced:
            lock_profile_rows(session, raced, state=False)
            update_profiles(session, _states(session, raced, config, vectors).values())
    return len(users)


#: Events folded per numpy pass: bounds its (half-lives x events) arrays and item matrix.
FOLD_CHUNK_EVENTS = 32_768


def _states(
    session: Session, users: Sequence[int], config: ProfileConfig, vectors: VectorCache
) -> StateBlock:
    """The profiles of ``users`` rebuilt from their stored events."""
    return fold_columns(session, user_event_columns(session, users), users, config, vectors)


def fold_columns(
    session: Session,
    events: EventColumns,
    users: Sequence[int],
    config: ProfileConfig,
    vectors: VectorCache,
) -> StateBlock:
    """Fresh states of ``users`` holding ``events`` (ordered by user, then time), as one
    `StateBlock` whose rows follow ``users``; a user without events gets an empty state."""
    n = len(events)
    if n == 0:
        return StateBlock.empty(config.half_lives, config.dim, users)
    weights = np.array(
        [
            event_weight(config.event_weights, kind, value)
            for kind, value in zip(events.types, events.values, strict=True)
        ],
        dtype=np.float64,
    )
    # Events come ordered by user, then time: each user's events are one group.
    starts = events.user_starts()
    bounds = np.r_[starts, n]
    half_lives = tuple(float(h) for h in config.half_lives)
    chunks = []
    first = 0
    while first < len(starts):
        last = int(np.searchsorted(bounds, bounds[first] + FOLD_CHUNK_EVENTS, side="right")) - 1
        last = min(max(last, first + 1), len(starts))  # at least one user, even a long one
        lo, hi = int(bounds[first]), int(bounds[last])
        items, rows = np.unique(events.item_ids[lo:hi], return_inverse=True)
        matrix = vectors.matrix(session, items, config.dim)
        chunks.append(
            StateBlock.from_events(
                half_lives,
                events.user_ids[starts[first:last]],
                matrix,
                rows,
                weights[lo:hi],
                events.times[lo:hi],
                events.item_ids[lo:hi],
                bounds[first : last + 1] - lo,
                config.buffer_size,
            )
        )
        first = last
    found = StateBlock.concatenate(chunks)
    if found.user_ids.tolist() == list(users):
        return found
    have = set(found.user_ids.tolist())
    without = [uid for uid in users if uid not in have]
    block = StateBlock.concatenate([found, StateBlock.empty(half_lives, config.dim, without)])
    position = {uid: i for i, uid in enumerate(block.user_ids.tolist())}
    return block.take([position[uid] for uid in users])


class VectorCache:
    """Current raw vectors of items, read from the database once per run (of a rebuild, or of
    an import's profile folds), looked up as arrays."""

    #: Beyond this many vectors (~0.3 GB at 384 dimensions) the cache starts over.
    MAX_ITEMS = 200_000

    def __init__(self, model: str) -> None:
        self.model = model
        self._lock = threading.Lock()  # folds of several write lanes share one cache
        self._ids = np.zeros(0, dtype=np.int64)  # ascending
        self._vectors: np.ndarray | None = None  # row i: item _ids[i]'s (zeros: it has none)

    def matrix(self, session: Session, item_ids: np.ndarray, dim: int) -> np.ndarray:
        """float64 (len(item_ids), dim): each item's vector, zeros for an item without one
        (folded as zeros, as ingestion does)."""
        wanted = np.unique(item_ids)
        with self._lock:
            missing = np.setdiff1d(wanted, self._ids, assume_unique=True)
            if len(missing):
                if len(self._ids) + len(missing) > self.MAX_ITEMS:
                    self._ids, self._vectors, missing = self._ids[:0], None, wanted
                self._add(missing, raw_vectors(session, missing.tolist(), self.model), dim)
            ids, vectors = self._ids, self._vectors
        assert vectors is not None
        return vectors[np.searchsorted(ids, item_ids)].astype(np.float64)

    def _add(self, ids: np.ndarray, found: dict[int, np.ndarray], dim: int) -> None:
        added = np.zeros((len(ids), dim), dtype=np.float32)
        for row, item in enumerate(ids.tolist()):
            if item in found:
                added[row] = found[item]
        ids = np.concatenate([self._ids, ids])
        vectors = added if self._vectors is None else np.concatenate([self._vectors, added])
        order = np.argsort(ids, kind="stable")
        self._ids, self._vectors = ids[order], vectors[order]


@dataclass
class VerifyReport:
    checked: int = 0
    drifted: list[tuple[int, float]] = field(default_factory=list)  # (user id, max abs error)


def verify_profiles(
    db: Database,
    config: ProfileConfig,
    embedder_model: str,
    *,
    tolerance: float = VERIFY_TOLERANCE,
    batch_users: int = REBUILD_BATCH_USERS,
) -> VerifyReport:
    """Compare every stored profile with the one rebuilt from its events, a batch of users
    (their events, profiles and a snapshot of both in one read transaction) at a time."""
    report = VerifyReport()
    vectors = VectorCache(embedder_model)
    for users in _user_batches(db, None, batch_users):
        # One snapshot for events and profiles: an event ingested between the two reads
        # would otherwise show as drift.
        with db.snapshot() as session:
            expected = _states(session, users, config, vectors).states()
            stored = {uid: state_from_row(row) for uid, row in profile_rows(session, users).items()}
            fold_pending(
                session,
                stored,
                buffer_size=config.buffer_size,
                event_weights=config.event_weights,
                embedder_model=embedder_model,
            )
        for user_id in users:
            report.checked += 1
            drift = _drift(stored.get(user_id), expected[user_id], tolerance)
            if drift is not None:
                report.drifted.append((user_id, drift))
    return report


def _drift(stored: ProfileState | None, expected: ProfileState, tolerance: float) -> float | None:
    """The stored profile's error (its pending events folded in) against the rebuilt one when
    beyond ``tolerance`` (or its event count differs), infinite when it is missing or shaped
    differently; else None."""
    if stored is None:
        return float("inf") if expected.event_count else None
    if stored.accumulators.shape != expected.accumulators.shape:
        return float("inf")
    error = _relative_error(stored, expected)
    if error > tolerance or stored.event_count != expected.event_count:
        return error
    return None


def _relative_error(a: ProfileState, b: ProfileState) -> float:
    """Largest difference between the two profiles' accumulators, relative to their scale."""
    ref = max(a.ref_time, b.ref_time)
    acc_a, acc_b = a.accumulators_at(ref), b.accumulators_at(ref)
    scale = max(1.0, float(np.abs(acc_b).max(initial=0.0)))
    return float(np.abs(acc_a - acc_b).max(initial=0.0)) / scale
