"""Recommend: profile -> correction network -> query vector -> index search -> filters.

The same object serves the HTTP API and the offline evaluation, so both rank the same way.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from indexer.live import LiveIndex
from indexer.vector_index import Hit
from interest.profile import ProfileState, state_from_row
from interest.query import normalise
from interest.registry import EncoderRegistry
from store.db import Database
from store.errors import NotFound
from store.events import popular_item_ids, profile_by_external_id, seen_item_ids
from store.items import get_item
from store.models import Event, Item
from store.settings import Settings

PERSONALIZED = "personalized"
COLD_START = "cold_start"
POPULAR_CACHE_S = 30.0


@dataclass(frozen=True)
class ScoredItem:
    id: str
    title: str
    score: float
    item_id: int  # internal id


@dataclass(frozen=True)
class Recommendation:
    items: list[ScoredItem]
    strategy: str
    index_version: int | None
    model_version: int | None


class Recommender:
    def __init__(
        self, db: Database, settings: Settings, index: LiveIndex, encoders: EncoderRegistry
    ) -> None:
        self.db = db
        self.settings = settings
        self.index = index
        self.encoders = encoders
        self._popular: tuple[float, list[tuple[int, int]]] = (0.0, [])
        self._popular_lock = threading.Lock()

    # -- users -----------------------------------------------------------------------------
    def for_user(
        self,
        user_external_id: str,
        k: int,
        *,
        exclude_seen: bool = True,
        categories: Sequence[str] = (),
        exclude: Collection[int] = (),
        now: float | None = None,
    ) -> Recommendation:
        """Top ``k`` for a user; unknown or empty users get the cold-start list.

        One read transaction serves the whole request: the index's catalogue check, the
        profile, the seen items and the item names.
        """
        now = time.time() if now is None else now
        with self.db.read() as session:
            self.index.refresh(session=session)
            user_id, row = profile_by_external_id(session, user_external_id)
            state = state_from_row(row) if row is not None and row.event_count else None
            seen = (
                seen_item_ids(session, user_id) if (user_id is not None and exclude_seen) else set()
            )
            excluded = set(exclude) | seen
            if state is None:
                return self._cold_start(k, excluded, categories, now, session)
            return self.for_state(
                state, k, exclude=excluded, categories=categories, now=now, session=session
            )

    def for_state(
        self,
        state: ProfileState,
        k: int,
        *,
        exclude: Collection[int] = (),
        categories: Sequence[str] = (),
        now: float | None = None,
        session: Session | None = None,
    ) -> Recommendation:
        """Rank for a profile state (also used for anonymous sessions and offline replay)."""
        now = time.time() if now is None else now
        model_version = self.index.model_version_id
        encoder = self.encoders.get(model_version)
        query = encoder.encode([state], now)[0]
        hits = self._search(query, k, exclude, categories, now, session)
        return Recommendation(
            self._describe(hits, session), PERSONALIZED, self.index.version_id, model_version
        )

    # -- items -----------------------------------------------------------------------------
    def similar(
        self, item_external_id: str, k: int, *, categories: Sequence[str] = ()
    ) -> Recommendation:
        with self.db.read() as session:
            self.index.refresh(session=session)
            item = get_item(session, item_external_id)
            item_id, raw = item.id, item.vector
            if raw is None:
                raise NotFound(
                    f"item {item_external_id!r} has no vector yet: run `driftrec reindex`"
                )
            vector = self._item_space(np.array([item_id]), np.frombuffer(raw, dtype=np.float32))
            hits = self._search(vector, k, {item_id}, categories, time.time(), session)
            return Recommendation(
                self._describe(hits, session),
                "similar",
                self.index.version_id,
                self.index.model_version_id,
            )

    def search_vector(
        self, raw: np.ndarray, k: int, *, categories: Sequence[str] = ()
    ) -> Recommendation:
        """Items nearest to a raw embedder vector (semantic search by text)."""
        with self.db.read() as session:
            self.index.refresh(session=session)
            vector = self._item_space(np.array([-1]), raw)
            hits = self._search(vector, k, set(), categories, time.time(), session)
            return Recommendation(
                self._describe(hits, session),
                "search",
                self.index.version_id,
                self.index.model_version_id,
            )

    def _item_space(self, ids: np.ndarray, raw: np.ndarray) -> np.ndarray:
        transform = self.encoders.transform_for(self.index.model_version_id)
        return normalise(transform(ids, raw.reshape(1, -1)))[0]

    # -- shared ----------------------------------------------------------------------------
    @contextmanager
    def _reading(self, session: Session | None) -> Iterator[Session]:
        """The caller's read session, or a new one."""
        if session is not None:
            yield session
        else:
            with self.db.read() as own:
                yield own

    def _search(
        self,
        query: np.ndarray,
        k: int,
        exclude: Collection[int],
        categories: Sequence[str],
        now: float,
        session: Session | None = None,
    ) -> list[Hit]:
        if not categories:
            return self.index.search(query, k, exclude=exclude, now=now)
        wanted = set(categories)
        fetch = 4 * k
        while True:
            hits = self.index.search(query, fetch, exclude=exclude, now=now)
            matching = self._with_categories([h.item_id for h in hits], wanted, session)
            kept = [h for h in hits if h.item_id in matching]
            if len(kept) >= k or len(hits) < fetch:
                return kept[:k]
            fetch *= 4

    def _with_categories(
        self, item_ids: list[int], wanted: set[str], session: Session | None = None
    ) -> set[int]:
        with self._reading(session) as reading:
            rows = reading.execute(select(Item.id, Item.categories).where(Item.id.in_(item_ids)))
            return {item_id for item_id, cats in rows if wanted & set(cats or ())}

    def _describe(self, hits: Sequence[Hit], session: Session | None = None) -> list[ScoredItem]:
        if not hits:
            return []
        items = Item.__table__.c  # a Core statement: no ORM overhead on the request path
        with self._reading(session) as reading:
            rows = reading.execute(
                select(items.id, items.external_id, items.title).where(
                    items.id.in_([h.item_id for h in hits])
                )
            )
            names = {item_id: (external_id, title) for item_id, external_id, title in rows}
        return [
            ScoredItem(names[h.item_id][0], names[h.item_id][1], h.score, h.item_id)
            for h in hits
            if h.item_id in names
        ]

    def _cold_start(
        self,
        k: int,
        exclude: Collection[int],
        categories: Sequence[str],
        now: float,
        session: Session | None = None,
    ) -> Recommendation:
        """Popular recent items (by event count in the window before the newest event)."""
        popular = self._popular_items()
        wanted = set(categories)
        candidates = [
            item_id
            for item_id, _ in popular
            if item_id not in exclude and self.index.is_servable(item_id, now)
        ]
        if wanted:
            matching = self._with_categories(candidates, wanted, session)
            candidates = [i for i in candidates if i in matching]
        top = candidates[:k]
        scores = dict(popular)
        best = max(scores.values(), default=1)
        hits = [Hit(item_id, scores[item_id] / best) for item_id in top]
        return Recommendation(
            self._describe(hits, session),
            COLD_START,
            self.index.version_id,
            self.index.model_version_id,
        )

    def _popular_items(self) -> list[tuple[int, int]]:
        with self._popular_lock:
            computed_at, cached = self._popular
            if time.monotonic() - computed_at < POPULAR_CACHE_S and cached:
                return cached
            with self.db.read() as session:
                newest = session.scalar(
                    select(Event.timestamp).order_by(Event.timestamp.desc()).limit(1)
                )
                since = (
                    newest - timedelta(seconds=self.settings.cold_start_window)
                    if newest is not None
                    else datetime.now(UTC)
                )
                recent = popular_item_ids(session, since=since, limit=2000)
                if len(recent) < 200:
                    recent = popular_item_ids(session, limit=2000)
            self._popular = (time.monotonic(), recent)
            return recent
