"""Fold the events a bulk import stored into their users' profiles, without reading the log back.

`store.importing.import_events` commits events a batch at a time and marks their users stale
under the import's id (`store.models.StaleProfile`). `ImportFold` keeps the events each committed
batch inserted and, every `FLUSH_EVENTS` events and at the end, adds them to the stored
profiles: folding does not depend on event order (`interest.profile`), so a profile plus the
new events equals the profile rebuilt from all of them, and a user with a long history costs
the new events, not the history. A profile is written once per flush, not once per batch.

Each flush of a user checks the import's mark under the user's lock (`store.events.lock_users`)
and clears it with the write: a user whose mark is gone was rebuilt from the log after the
batch committed, which holds these events already, and is skipped. What a killed import did not
fold stays marked, for `interest.rebuild.rebuild_stale_profiles`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial

import numpy as np
from sqlalchemy.orm import Session

from interest.ingest import ProfileConfig
from interest.rebuild import REBUILD_BATCH_USERS, VectorCache, fold_columns
from interest.state_block import StateBlock
from store.db import Database
from store.events import (
    EventColumns,
    clear_stale_marks,
    insert_profiles,
    lock_profile_rows,
    lock_users,
    marked_users,
    update_profiles,
)
from store.importing import EventRecord, ImportStats, import_events, new_import_id

log = logging.getLogger(__name__)

#: Events held in memory before they are folded (~50 bytes each as columns).
FLUSH_EVENTS = 1_000_000


def import_events_into_profiles(
    db: Database,
    records: Iterable[EventRecord],
    config: ProfileConfig,
    embedder_model: str,
    *,
    progress: bool = False,
) -> tuple[ImportStats, int]:
    """Bulk-load events (`store.importing.import_events`, types without a weight rejected) and
    fold them into their users' profiles; return the import's stats and the profiles updated.

    When the import stops on an error (a malformed line, say), the batches committed before it
    are folded all the same, so their users' profiles do not wait for a rerun.
    """
    import_id = new_import_id()
    fold = ImportFold(db, config, embedder_model, import_id)
    try:
        stats = import_events(
            db,
            records,
            progress=progress,
            import_id=import_id,
            event_types=frozenset(config.event_weights),
            on_commit=fold.add,
        )
    except Exception:
        with contextlib.suppress(Exception):  # the import's own error is the one to report
            fold.flush()
        raise
    fold.flush()
    return stats, fold.updated


class ImportFold:
    """Collects an import's inserted events (`add`, after each commit) and folds them (`flush`)."""

    def __init__(
        self,
        db: Database,
        config: ProfileConfig,
        embedder_model: str,
        import_id: str,
        *,
        flush_events: int = FLUSH_EVENTS,
        batch_users: int = REBUILD_BATCH_USERS,
    ) -> None:
        self.db, self.config, self.import_id = db, config, import_id
        self.flush_events, self.batch_users = flush_events, batch_users
        self.vectors = VectorCache(embedder_model)
        #: Events of committed batches not folded yet, as columns, with their batch numbers.
        self.pending: list[tuple[EventColumns, int]] = []
        self.pending_count = 0
        self._updated_users: set[int] = set()

    @property
    def updated(self) -> int:
        """Profiles this import's events were folded into so far (each user once)."""
        return len(self._updated_users)

    def add(self, events: EventColumns, batch: int) -> None:
        """The events batch number ``batch`` inserted, once that batch committed."""
        self.pending.append((events, batch))
        self.pending_count += len(events)
        if self.pending_count >= self.flush_events:
            self.flush()

    def flush(self) -> int:
        """Fold what was added since the last flush; return the count of profiles updated."""
        if not self.pending:
            return 0
        events, batches = _by_user_and_time(self.pending)
        self.pending, self.pending_count = [], 0
        starts = events.user_starts()
        bounds = np.r_[starts, len(events)]

        def works() -> Iterator[Callable[[Session], set[int]]]:
            for first in range(0, len(starts), self.batch_users):
                last = min(first + self.batch_users, len(starts))
                lo, hi = int(bounds[first]), int(bounds[last])
                yield partial(
                    self._fold_batch, events=events.take(slice(lo, hi)), batches=batches[lo:hi]
                )

        # On PostgreSQL two transactions at once, on users of their own: one computes while
        # the other's profiles are written.
        updated: set[int] = set()
        for folded in self.db.run_writes(works()):
            updated |= folded
        self._updated_users |= updated
        log.info("imported events folded into profiles=%d", len(updated))
        return len(updated)

    def _fold_batch(self, session: Session, events: EventColumns, batches: np.ndarray) -> set[int]:
        users = sorted(set(events.user_ids.tolist()))
        live = lock_users(session, users)
        marked = marked_users(session, [uid for uid in users if uid in live], self.import_id)
        if not marked:
            return set()
        # A user's events from batches before the mark's were read by a rebuild that cleared
        # an earlier mark (or folded by an earlier flush): only the rest are added.
        since = np.array([marked.get(uid, -1) for uid in events.user_ids.tolist()])
        keep = (since >= 0) & (batches >= since)
        mine = sorted(set(events.user_ids[keep].tolist()))
        deltas = fold_columns(
            session, events.take(np.flatnonzero(keep)), mine, self.config, self.vectors
        )
        position = {uid: i for i, uid in enumerate(mine)}
        stored = lock_profile_rows(session, mine)
        new = [uid for uid in mine if uid not in stored]
        if new:
            created = insert_profiles(session, deltas.take([position[uid] for uid in new]).values())
            # An event posted to the API created the profile after our lock query
            # (PostgreSQL): add ours to it.
            stored.update(lock_profile_rows(session, [uid for uid in new if uid not in created]))
        # A profile stored with other half-lives or dimensions (settings changed, profiles not
        # rebuilt yet) cannot take sums made with these: it keeps its mark and is rebuilt from
        # the log after the import (`rebuild_stale_profiles`).
        other = {uid for uid, row in stored.items() if not deltas.matches(row)}
        absorbing = [uid for uid in mine if uid in stored and uid not in other]
        if absorbing:
            states = StateBlock.from_rows(
                [stored[uid] for uid in absorbing], deltas.half_lives, deltas.dim
            )
            states.absorb(
                deltas.take([position[uid] for uid in absorbing]), self.config.buffer_size
            )
            update_profiles(session, states.values(shape=False))
        mine = [uid for uid in mine if uid not in other]
        clear_stale_marks(session, mine, self.import_id)
        return set(mine)


def _by_user_and_time(
    pending: Sequence[tuple[EventColumns, int]],
) -> tuple[EventColumns, np.ndarray]:
    """The parts as one set of columns ordered by user, then time (what `fold_columns` wants),
    and each event's batch number in the same order."""
    events = EventColumns.concatenate([part for part, _ in pending])
    batches = np.concatenate([np.full(len(part), batch, dtype=np.int64) for part, batch in pending])
    order = np.lexsort((events.times, events.user_ids))
    return events.take(order), batches[order]
