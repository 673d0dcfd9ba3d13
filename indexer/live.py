"""The index a server searches: the active published version plus an in-memory overlay.

A published index file reflects the catalogue at one revision. Items changed later (upserts and
deletes through the API, possibly handled by another worker) are read from the database by
revision and kept in a small exact overlay; their entries in the base file are masked. Each
server refreshes cheaply before it searches (one indexed query), so an item is searchable in
every worker as soon as the write that added it has committed, and a newly activated index
version is swapped in without a restart.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Row
from sqlalchemy.orm import Session

from indexer.reindex import ItemTransform, identity_transform
from indexer.vector_index import Hit, VectorIndex
from store.db import Database
from store.items import (
    catalogue_revision,
    changed_since,
    current_catalogue_revision,
    unservable_rows,
)
from store.models import IndexVersion, Item
from store.versions import active_index_version

log = logging.getLogger(__name__)

#: The background watcher's shortest pause between version checks (tests use an interval of 0).
MIN_WATCH_INTERVAL_S = 0.05
#: Share of a core the watcher's checksum of a new version may take: every worker verifies the
#: file at about the same moment, at full speed 0.8 s of CPU each for a 1M-item index, a burst
#: that took both cores from requests (p99 0.1-1 s around each swap under load,
#: bench/HISTORY.md); at a tenth it takes ~9 s at 1M (under a second at 100k), beside them.
BACKGROUND_VERIFY_DUTY = 0.1


@dataclass
class _Snapshot:
    version: IndexVersion | None
    base: VectorIndex | None
    revision: int
    overlay: VectorIndex | None = None
    masked: set[int] = field(default_factory=set)  # base ids superseded by the overlay
    blocked: set[int] = field(default_factory=set)  # deleted or unavailable
    expires: dict[int, float] = field(default_factory=dict)  # item id -> epoch seconds


class LiveIndex:
    def __init__(
        self,
        db: Database,
        embedder_model: str,
        *,
        transform_for: Callable[[int | None], ItemTransform] = lambda _v: identity_transform,
        version_check_interval_s: float = 2.0,
        mmap: bool = False,
        select_version: Callable[[Session], IndexVersion | None] = active_index_version,
        load_in_background: bool = False,
    ) -> None:
        """``select_version`` picks the version to serve: the active one, or for an experiment's
        arm the newest index built for its model.

        ``load_in_background`` (servers): after the first load, a thread looks for a newly
        activated version every ``version_check_interval_s`` and loads it while requests go on
        with the current one, then swaps it in: reading and checksumming the file (about a
        second for a 1M-item index) never stalls a request, every worker switches within the
        interval plus the load whether or not it gets traffic, and a file that fails its checks
        is logged and skipped, the current version kept. ``refresh(force=True)`` still loads
        in the caller's thread."""
        self._db = db
        self._embedder_model = embedder_model
        self._transform_for = transform_for
        self._interval = version_check_interval_s
        self._mmap = mmap
        self._select_version = select_version
        self._lock = threading.RLock()
        self._snapshot = _Snapshot(version=None, base=None, revision=0)
        self._checked_at = 0.0
        self._ready = False
        self._load_in_background = load_in_background
        self._watcher: threading.Thread | None = None
        self._closed = threading.Event()
        self._failed_version_id: int | None = None  # not retried until another is activated

    # -- state -----------------------------------------------------------------------------
    @property
    def revision(self) -> int:
        """The catalogue revision this process has applied (grows with every item change)."""
        return self._snapshot.revision

    @property
    def version_id(self) -> int | None:
        version = self._snapshot.version
        return version.id if version is not None else None

    @property
    def model_version_id(self) -> int | None:
        version = self._snapshot.version
        return version.model_version_id if version is not None else None

    @property
    def loaded(self) -> bool:
        """True once the active version (or, before the first reindex, the catalogue) is loaded."""
        return self._ready

    def __len__(self) -> int:
        snap = self._snapshot
        # ``masked`` also holds ids that were never in the base (items added after it was built),
        # so with a base the count is approximate; never negative.
        base = len(snap.base) - len(snap.masked) if snap.base is not None else 0
        overlay = len(snap.overlay) if snap.overlay is not None else 0
        return max(0, base + overlay)

    # -- refresh ---------------------------------------------------------------------------
    def refresh(
        self,
        *,
        force: bool = False,
        session: Session | None = None,
        revision: int | None = None,
    ) -> None:
        """Load a newly activated version and apply catalogue changes since the last refresh.

        The per-request part is one indexed query (the catalogue revision), run past the
        Session when the caller passes neither a ``session`` (whose transaction it then uses)
        nor the ``revision`` it has just read (`store.items.REVISION_COLUMN`; then no query);
        a read transaction is opened only to catch up with catalogue changes. The active
        version is looked up at most every ``version_check_interval_s`` (with
        ``load_in_background``, by the watcher thread instead, after the first load).
        """
        with self._lock:
            now = time.monotonic()
            due = now - self._checked_at >= self._interval and not self._load_in_background
            if force or due or not self._ready:
                self._checked_at = now
                with self._db.read() as own:
                    active = self._select_version(own)
                if active is not None and active.id != self.version_id:
                    self._snapshot = self._prepared(active)
                    self._log_loaded(self._snapshot)
                self._ready = True
                if self._load_in_background and self._watcher is None:
                    self._watcher = threading.Thread(
                        target=self._watch, name="index-watch", daemon=True
                    )
                    self._watcher.start()
            if session is not None:
                self._catch_up(session, revision)
                return
            if revision is None:
                revision = current_catalogue_revision(self._db)
            if revision > self._snapshot.revision:
                with self._db.read() as own:
                    self._catch_up(own, revision)

    def close(self) -> None:
        """Stop the background watcher (if any)."""
        self._closed.set()

    def _catch_up(self, session: Session, revision: int | None = None) -> None:
        if revision is None:
            revision = catalogue_revision(session)
        if revision > self._snapshot.revision:
            self._apply(self._snapshot, changed_since(session, self._snapshot.revision), revision)

    def _watch(self) -> None:
        while not self._closed.wait(max(self._interval, MIN_WATCH_INTERVAL_S)):
            try:
                with self._db.read() as session:
                    active = self._select_version(session)
            except Exception:  # noqa: BLE001 - the database may be briefly unreachable
                log.warning("index version check failed", exc_info=True)
                continue
            seen_version_id = self.version_id
            if active is None or active.id in (seen_version_id, self._failed_version_id):
                continue
            try:
                snapshot = self._prepared(active, verify_duty=BACKGROUND_VERIFY_DUTY)
            except Exception:  # noqa: BLE001 - a bad file must not take the server down
                log.exception(
                    "index load failed version=%d: still serving the current one", active.id
                )
                self._failed_version_id = active.id
                continue
            with self._lock:
                if self.version_id != seen_version_id:  # a forced refresh loaded one meanwhile
                    continue
                self._snapshot = snapshot
            self._log_loaded(snapshot)

    def _prepared(self, version: IndexVersion, *, verify_duty: float = 1.0) -> _Snapshot:
        """A snapshot of ``version``: its file (checksum verified at ``verify_duty`` of a core),
        the items not servable now, and the catalogue changes since it was built."""
        base = VectorIndex.load(
            Path(version.path), version.checksum, mmap=self._mmap, verify_duty=verify_duty
        )
        snapshot = _Snapshot(version=version, base=base, revision=version.catalogue_revision)
        with self._db.read() as session:
            for item in unservable_rows(session):
                _track_servability(snapshot, item)
            changes = changed_since(session, version.catalogue_revision)
            revision = max([version.catalogue_revision] + [c.revision for c in changes])
        self._apply(snapshot, changes, revision)
        return snapshot

    @staticmethod
    def _log_loaded(snapshot: _Snapshot) -> None:
        assert snapshot.version is not None and snapshot.base is not None
        log.info(
            "index loaded version=%d items=%d kind=%s",
            snapshot.version.id,
            len(snapshot.base),
            snapshot.base.kind,
        )

    def _apply(self, snap: _Snapshot, changes: list[Item], revision: int) -> None:
        transform = self._transform_for(snap.version.model_version_id if snap.version else None)
        add_ids, add_raw = [], []
        if snap.overlay is not None and changes:
            snap.overlay.remove(np.array([item.id for item in changes], dtype=np.int64))
        for item in changes:
            _track_servability(snap, item)
            snap.masked.add(item.id)
            current = (
                item.deleted_at is None
                and item.vector is not None
                and item.vector_model == self._embedder_model
                and item.vector_hash == item.content_hash
            )
            if current:
                add_ids.append(item.id)
                add_raw.append(np.frombuffer(item.vector, dtype=np.float32))
        if add_ids:
            ids = np.array(add_ids, dtype=np.int64)
            vectors = transform(ids, np.stack(add_raw))
            if snap.overlay is None:
                snap.overlay = VectorIndex.empty(vectors.shape[1])
            snap.overlay.add(ids, vectors)
        snap.revision = revision

    # -- search ----------------------------------------------------------------------------
    def is_servable(self, item_id: int, now: float) -> bool:
        snap = self._snapshot
        if item_id in snap.blocked:
            return False
        expires = snap.expires.get(item_id)
        return expires is None or expires > now

    def vector(self, item_id: int) -> np.ndarray | None:
        """The index-space vector of an item, when the index can give it back."""
        snap = self._snapshot
        if snap.overlay is not None and item_id not in snap.blocked:
            found = snap.overlay.reconstruct(item_id)
            if found is not None:
                return found
        if snap.base is not None and item_id not in snap.masked:
            return snap.base.reconstruct(item_id)
        return None

    def search(
        self,
        query: np.ndarray,
        k: int,
        *,
        exclude: Collection[int] = (),
        accept: Callable[[int], bool] | None = None,
        now: float | None = None,
    ) -> list[Hit]:
        """Top ``k`` servable items (not deleted, available, unexpired), minus ``exclude``."""
        snap = self._snapshot
        now = time.time() if now is None else now

        def keep(item_id: int) -> bool:
            return self.is_servable(item_id, now) and (accept is None or accept(item_id))

        hits: list[Hit] = []
        if snap.base is not None:
            hits = snap.base.search(
                query,
                k,
                exclude=set(exclude) | snap.masked | snap.blocked,
                accept=keep if (snap.expires or accept) else None,
            )
        if snap.overlay is not None and len(snap.overlay):
            hits += snap.overlay.search(query, k, exclude=set(exclude) | snap.blocked, accept=keep)
            hits.sort(key=lambda hit: -hit.score)
        return hits[:k]


def _track_servability(snapshot: _Snapshot, item: Item | Row[Any]) -> None:
    """``item``: an `Item`, or a row with its id, deleted_at, available and expires_at."""
    if item.deleted_at is not None or not item.available:
        snapshot.blocked.add(item.id)
    else:
        snapshot.blocked.discard(item.id)
    if item.expires_at is not None and item.deleted_at is None:
        snapshot.expires[item.id] = _epoch(item.expires_at)
    else:
        snapshot.expires.pop(item.id, None)


def _epoch(moment: datetime) -> float:
    return moment.timestamp()
