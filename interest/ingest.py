"""Event ingestion: idempotent insert by event id and the profile update in one transaction.

This is the one ingest path: the HTTP API, bulk tools that need live profiles and the replay
evaluation all call `ingest_events`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
from sqlalchemy.orm import Session

from interest.profile import ProfileState, state_from_row, write_state
from store.db import Database
from store.dialect import insert_ignoring_conflicts
from store.events import EventRow, ensure_users, insert_events, lock_profiles
from store.items import ids_by_external, items_by_ids
from store.models import Profile

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EventInput:
    event_id: str
    user_id: str
    item_id: str
    type: str
    timestamp: datetime
    value: float | None = None
    #: The recommendation answer the event came from (attribution), when known.
    recomm_id: str | None = None


@dataclass
class IngestResult:
    accepted: int = 0
    duplicates: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)
    #: Internal ids of users whose profiles changed.
    user_ids: set[int] = field(default_factory=set)


def event_weight(weights: Mapping[str, float], event_type: str, value: float | None) -> float:
    """The configured weight of the event type, scaled by the event's value when it has one."""
    return weights[event_type] * (1.0 if value is None else float(value))


@dataclass(frozen=True)
class ProfileConfig:
    half_lives: tuple[float, ...]
    dim: int
    buffer_size: int
    event_weights: Mapping[str, float]


def raw_vectors(session: Session, item_ids: Sequence[int], model: str) -> dict[int, np.ndarray]:
    """Current raw embedder vectors of the given items (items without one are absent)."""
    vectors = {}
    for item in items_by_ids(session, item_ids).values():
        if (
            item.vector is not None
            and item.vector_model == model
            and item.vector_hash == item.content_hash
        ):
            vectors[item.id] = np.frombuffer(item.vector, dtype=np.float32)
    return vectors


def ingest_events(
    db: Database,
    events: Sequence[EventInput],
    config: ProfileConfig,
    embedder_model: str,
    *,
    pre_rejected: Sequence[tuple[int, str]] = (),
) -> IngestResult:
    """Store new events and fold them into their users' profiles, all in one transaction.

    ``events`` are the entries that passed validation; ``pre_rejected`` carries the positions and
    reasons of those that did not, so indices in the result refer to the caller's batch.
    Retried transactions (lock timeouts, serialization failures) start from scratch.
    """

    def work(session: Session) -> IngestResult:
        return _ingest(session, events, config, embedder_model, pre_rejected)

    result = db.run_write(work)
    log.info(
        "events ingested accepted=%d duplicates=%d rejected=%d",
        result.accepted,
        result.duplicates,
        len(result.rejected),
    )
    return result


def _ingest(
    session: Session,
    events: Sequence[EventInput],
    config: ProfileConfig,
    embedder_model: str,
    pre_rejected: Sequence[tuple[int, str]],
) -> IngestResult:
    result = IngestResult(rejected=list(pre_rejected))
    positions = _positions(len(events) + len(pre_rejected), pre_rejected)
    items = ids_by_external(session, {e.item_id for e in events})
    valid: list[tuple[int, EventInput]] = []
    seen_ids: set[str] = set()
    for position, event in zip(positions, events, strict=True):
        if event.type not in config.event_weights:
            result.rejected.append((position, f"unknown event type {event.type!r}"))
        elif event.item_id not in items:
            result.rejected.append((position, f"unknown item {event.item_id!r}"))
        elif event.event_id in seen_ids:
            result.duplicates += 1
        else:
            seen_ids.add(event.event_id)
            valid.append((position, event))
    result.rejected.sort()
    if not valid:
        return result
    users = ensure_users(session, {e.user_id for _, e in valid})
    rows = [
        EventRow(
            e.event_id,
            users[e.user_id],
            items[e.item_id],
            e.type,
            e.value,
            e.timestamp,
            e.recomm_id,
        )
        for _, e in valid
    ]
    inserted = insert_events(session, rows)
    result.duplicates += len(rows) - len(inserted)
    fresh = [row for row in rows if row.event_id in inserted]
    result.accepted = len(fresh)
    if fresh:
        apply_to_profiles(session, fresh, config, embedder_model)
        result.user_ids = {row.user_id for row in fresh}
    return result


def _positions(total: int, pre_rejected: Sequence[tuple[int, str]]) -> list[int]:
    skipped = {index for index, _ in pre_rejected}
    return [i for i in range(total) if i not in skipped]


def apply_to_profiles(
    session: Session, rows: Sequence[EventRow], config: ProfileConfig, embedder_model: str
) -> None:
    """Fold stored events into their users' profiles (rows locked for the transaction)."""
    user_ids = sorted({row.user_id for row in rows})
    _ensure_profile_rows(session, user_ids, config)
    profiles = lock_profiles(session, user_ids)
    vectors = raw_vectors(session, [row.item_id for row in rows], embedder_model)
    zero = np.zeros(config.dim, dtype=np.float32)
    states: dict[int, ProfileState] = {uid: state_from_row(profiles[uid]) for uid in user_ids}
    for row in sorted(rows, key=lambda r: (r.timestamp, r.item_id)):
        states[row.user_id].apply(
            vectors.get(row.item_id, zero),
            event_weight(config.event_weights, row.type, row.value),
            row.timestamp.timestamp(),
            row.item_id,
            config.buffer_size,
        )
    for user_id, state in states.items():
        write_state(profiles[user_id], state)
    session.flush()


def _ensure_profile_rows(session: Session, user_ids: Sequence[int], config: ProfileConfig) -> None:
    """Create empty profiles that do not exist yet; concurrent creators do not conflict."""
    empty = Profile(user_id=0)
    write_state(empty, ProfileState.empty(config.half_lives, config.dim))
    template = {
        "dim": empty.dim,
        "half_lives": empty.half_lives,
        "accumulators": empty.accumulators,
        "weight_sums": empty.weight_sums,
        "ref_time": empty.ref_time,
        "recent": [],
        "event_count": 0,
        "version": 1,
    }
    insert_ignoring_conflicts(
        session, Profile.__table__, [{"user_id": uid, **template} for uid in user_ids], "user_id"
    )
