"""Recommend: profile -> correction network -> query vector -> index search -> filters.

The same object serves the HTTP API and the offline evaluation, so both rank the same way.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from indexer.live import LiveIndex
from indexer.vector_index import Hit
from interest.controls import Contribution, Controls, contributions, exponential_decay, mmr
from interest.ingest import raw_vectors
from interest.pending import fold_events
from interest.profile import ProfileState, state_from_row
from interest.query import QueryEncoder, normalise
from interest.registry import EncoderRegistry
from store.db import Database
from store.errors import NotFound
from store.events import (
    item_ids_with_event_types,
    popular_item_ids,
    profile_by_external_id,
)
from store.items import item_names, item_vector
from store.models import Event, Item
from store.settings import Settings

PERSONALIZED = "personalized"
COLD_START = "cold_start"
POPULAR_CACHE_S = 30.0
#: Event types that keep an item out of a user's recommendations even with exclude_seen=false.
EXCLUDING_EVENT_TYPES = ("dislike", "hide")


#: Items whose external id and title one process keeps for its answers (~200 bytes each).
NAME_CACHE_ITEMS = 100_000


class NameCache:
    """External id and title by internal item id, valid for one catalogue revision.

    Naming the answer's items was one SQL statement per request (~8% of a worker's CPU at 100k
    items, py-spy under load); names repeat across answers. Any catalogue change (a new
    revision, as `LiveIndex.revision` sees it) empties the cache, and so does reaching
    `NAME_CACHE_ITEMS`: simple, bounded, never stale.
    """

    def __init__(self, capacity: int = NAME_CACHE_ITEMS) -> None:
        self._capacity = capacity
        self._revision = -1
        self._names: dict[int, tuple[str, str]] = {}

    def lookup(self, item_ids: Sequence[int], revision: int) -> dict[int, tuple[str, str]]:
        if revision != self._revision:
            self._names, self._revision = {}, revision
        names = self._names
        return {i: names[i] for i in item_ids if i in names}

    def store(self, names: dict[int, tuple[str, str]], revision: int) -> None:
        if revision != self._revision:
            return  # read under another revision: the next lookup starts afresh
        if len(self._names) + len(names) > self._capacity:
            self._names = {}
        self._names.update(names)


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
    #: With ``Controls.explain``: per recommended item (internal id), the user's recent items
    #: that pulled it up most. None when not asked for.
    explanations: dict[int, list[Contribution]] | None = None
    #: The running experiment and the arm ("control" or "treatment") that served the answer.
    experiment: str | None = None
    arm: str | None = None

    @property
    def arm_label(self) -> str | None:
        """``"<experiment>:<arm>"``, how answers are grouped for attribution; None outside one."""
        return f"{self.experiment}:{self.arm}" if self.experiment and self.arm else None


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
        self._names = NameCache()

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
        controls: Controls | None = None,
    ) -> Recommendation:
        """Top ``k`` for a user; unknown or empty users get the cold-start list.

        The profile, the index's catalogue check and the seen items are one statement, run
        past SQLAlchemy's Session (`store.direct_read`); the rest opens a read transaction
        only when it needs one (a name not cached, categories, a cold start).
        """
        now = time.time() if now is None else now
        found = profile_by_external_id(
            self.db, user_external_id, self.settings.embedder_model, with_seen=exclude_seen
        )
        self.index.refresh(revision=found.catalogue_revision)
        user_id, row = found.user_id, found.profile
        state = None
        if row is not None and (row.event_count or found.pending):
            state = state_from_row(row)
            if found.pending:  # events not in the stored profile yet
                settings = self.settings
                fold_events(
                    state, found.pending, settings.recent_buffer_size, settings.event_weights
                )
        excluded = set(exclude) | found.seen
        if user_id is not None and not exclude_seen:
            with self.db.read() as session:
                excluded |= item_ids_with_event_types(session, user_id, EXCLUDING_EVENT_TYPES)
        if state is None:
            return self._cold_start(k, excluded, categories, now, controls=controls)
        return self.for_state(
            state, k, exclude=excluded, categories=categories, now=now, controls=controls
        )

    def for_state(
        self,
        state: ProfileState,
        k: int,
        *,
        exclude: Collection[int] = (),
        categories: Sequence[str] = (),
        now: float | None = None,
        controls: Controls | None = None,
    ) -> Recommendation:
        """Rank for a profile state (also used for anonymous sessions and offline replay)."""
        now = time.time() if now is None else now
        model_version = self.index.model_version_id
        encoder = self.encoders.get(model_version)
        state = self._with_text_vectors(state, encoder)
        query = encoder.encode([state], now)[0]
        if not query.any():
            # Nothing to rank by (events of value 0, items without vectors yet): an index
            # search would order every item by a score of 0. Popular items instead.
            return self._cold_start(k, exclude, categories, now, controls=controls)
        if controls is not None:
            return self._for_state_controlled(
                state, encoder, query, k, exclude, categories, now, controls
            )
        hits = self._search(query, k, exclude, categories, now)
        return Recommendation(
            self._describe(hits), PERSONALIZED, self.index.version_id, model_version
        )

    def _with_text_vectors(self, state: ProfileState, encoder: QueryEncoder) -> ProfileState:
        """``state`` with the stored raw vectors of the buffered items the encoder maps from
        text (items newer than the model); one query, and none when there are no such items."""
        wanted = encoder.missing_text_vectors(state)
        if not wanted:
            return state
        with self.db.read() as session:
            found = raw_vectors(session, wanted, self.settings.embedder_model)
        return replace(state, text_vectors={**state.text_vectors, **found})

    # -- items -----------------------------------------------------------------------------
    def similar(
        self, item_external_id: str, k: int, *, categories: Sequence[str] = ()
    ) -> Recommendation:
        """Items nearest to a catalogue item. The item's vector and the index's catalogue
        check are one statement past the Session (as for users, `for_user`)."""
        found = item_vector(self.db, item_external_id)
        self.index.refresh(revision=found.catalogue_revision)
        if found.vector is None:
            raise NotFound(f"item {item_external_id!r} has no vector yet: run `driftrec reindex`")
        item_id = found.item_id
        raw = np.frombuffer(found.vector, dtype=np.float32)
        vector = self._item_space(np.array([item_id]), raw)
        hits = self._search(vector, k, {item_id}, categories, time.time())
        return Recommendation(
            self._describe(hits), "similar", self.index.version_id, self.index.model_version_id
        )

    def search_vector(
        self, raw: np.ndarray, k: int, *, categories: Sequence[str] = ()
    ) -> Recommendation:
        """Items nearest to a raw embedder vector (semantic search by text). No read
        transaction unless one is needed (categories, catalogue changes to catch up with)."""
        self.index.refresh()
        vector = self._item_space(np.array([-1]), raw)
        hits = self._search(vector, k, set(), categories, time.time())
        return Recommendation(
            self._describe(hits), "search", self.index.version_id, self.index.model_version_id
        )

    def _item_space(self, ids: np.ndarray, raw: np.ndarray) -> np.ndarray:
        transform = self.encoders.transform_for(self.index.model_version_id)
        return normalise(transform(ids, raw.reshape(1, -1)))[0]

    # -- shared ----------------------------------------------------------------------------
    def _search(
        self,
        query: np.ndarray,
        k: int,
        exclude: Collection[int],
        categories: Sequence[str],
        now: float,
    ) -> list[Hit]:
        if not categories:
            return self.index.search(query, k, exclude=exclude, now=now)
        wanted = set(categories)
        fetch = 4 * k
        while True:
            hits = self.index.search(query, fetch, exclude=exclude, now=now)
            matching = self._with_categories([h.item_id for h in hits], wanted)
            kept = [h for h in hits if h.item_id in matching]
            if len(kept) >= k or len(hits) < fetch:
                return kept[:k]
            fetch *= 4

    def _with_categories(self, item_ids: list[int], wanted: set[str]) -> set[int]:
        with self.db.read() as session:
            rows = session.execute(select(Item.id, Item.categories).where(Item.id.in_(item_ids)))
            return {item_id for item_id, cats in rows if wanted & set(cats or ())}

    def _describe(self, hits: Sequence[Hit]) -> list[ScoredItem]:
        """The hits with their external ids and titles: from this process's name cache, the
        rest in one statement of their own (`store.items.item_names`)."""
        if not hits:
            return []
        revision = self.index.revision
        names = self._names.lookup([h.item_id for h in hits], revision)
        missing = [h.item_id for h in hits if h.item_id not in names]
        if missing:
            found = item_names(self.db, missing)
            names.update(found)
            self._names.store(found, revision)
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
        *,
        controls: Controls | None = None,
    ) -> Recommendation:
        """Popular recent items (by event count in the window before the newest event)."""
        popular = self._popular_items()
        wanted = set(categories)
        candidates = [
            item_id
            for item_id, _ in popular
            if item_id not in exclude and self.index.is_servable(item_id, now)
        ]
        if controls is not None:
            return self._cold_start_controlled(candidates, popular, k, controls)
        if wanted:
            matching = self._with_categories(candidates, wanted)
            candidates = [i for i in candidates if i in matching]
        top = candidates[:k]
        scores = dict(popular)
        best = max(scores.values(), default=1)
        hits = [Hit(item_id, scores[item_id] / best) for item_id in top]
        return Recommendation(
            self._describe(hits),
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

    # -- per-request controls (interest.controls) ------------------------------------------
    def _for_state_controlled(
        self,
        state: ProfileState,
        encoder: QueryEncoder,
        query: np.ndarray,
        k: int,
        exclude: Collection[int],
        categories: Sequence[str],
        now: float,
        controls: Controls,
    ) -> Recommendation:
        if categories and not controls.filter.categories:
            controls = replace(
                controls, filter=replace(controls.filter, categories=tuple(categories))
            )
        with self.db.read() as reading:
            pool = self._candidates(query, controls.pool_size(k), exclude, controls, now, reading)
            hits = self._diversify(pool, k, controls, reading)
            explanations = (
                self._explain(state, encoder, hits, reading) if controls.explain else None
            )
            return Recommendation(
                self._describe(hits),
                PERSONALIZED,
                self.index.version_id,
                encoder.version_id,
                explanations,
            )

    def _candidates(
        self,
        query: np.ndarray,
        want: int,
        exclude: Collection[int],
        controls: Controls,
        now: float,
        session: Session,
    ) -> list[Hit]:
        """The best ``want`` hits passing the filter and the score floor.

        Over-fetches in rounds (4x, 16x, ... of ``want``) until enough pass or the catalogue
        (or the part of it above ``min_score``) is exhausted, so a narrow filter never starves
        the answer. Items already decided are not looked up again.
        """
        item_filter = controls.filter
        fetch = 4 * want if item_filter.active else want
        decided: dict[int, bool] = {}
        excluded = exclude if isinstance(exclude, set | frozenset) else set(exclude)
        while True:
            hits = self.index.search(query, fetch, exclude=excluded, now=now)
            exhausted = len(hits) < fetch
            if controls.min_score is not None:
                above = [h for h in hits if h.score >= controls.min_score]
                exhausted = exhausted or len(above) < len(hits)
                hits = above
            if item_filter.active:
                undecided = [h.item_id for h in hits if h.item_id not in decided]
                decided.update(self._filter_decisions(undecided, controls, session))
                hits = [h for h in hits if decided.get(h.item_id, False)]
            if len(hits) >= want or exhausted:
                return hits[:want]
            fetch *= 4

    def _filter_decisions(
        self, item_ids: Sequence[int], controls: Controls, session: Session
    ) -> dict[int, bool]:
        """Whether each item passes the filter: one query per 5,000 ids."""
        items = Item.__table__.c
        decisions = {item_id: False for item_id in item_ids}
        for start in range(0, len(item_ids), 5_000):
            chunk = list(item_ids[start : start + 5_000])
            rows = session.execute(
                select(items.id, items.categories, items.properties).where(items.id.in_(chunk))
            )
            for item_id, cats, props in rows:
                decisions[item_id] = controls.filter.matches(cats, props)
        return decisions

    def _diversify(
        self, pool: list[Hit], k: int, controls: Controls, session: Session
    ) -> list[Hit]:
        if controls.diversity <= 0.0 or len(pool) <= 1:
            return pool[:k]
        vectors = self._index_vectors([h.item_id for h in pool], session)
        by_id = {h.item_id: h for h in pool}
        order = mmr(
            [h.item_id for h in pool], [h.score for h in pool], vectors, k, controls.diversity
        )
        return [by_id[item_id] for item_id in order]

    def _index_vectors(self, item_ids: Sequence[int], session: Session) -> dict[int, np.ndarray]:
        """Index-space vectors: from the index where it keeps them, else the current stored ones
        (made from the item's present text) transformed."""
        found: dict[int, np.ndarray] = {}
        for item_id in item_ids:
            vector = self.index.vector(item_id)
            if vector is not None:
                found[item_id] = np.asarray(vector, dtype=np.float32)
        missing = [item_id for item_id in item_ids if item_id not in found]
        current = raw_vectors(session, missing, self.settings.embedder_model) if missing else {}
        if current:
            ids = np.fromiter(current, dtype=np.int64, count=len(current))
            transform = self.encoders.transform_for(self.index.model_version_id)
            for item_id, vector in zip(
                ids, transform(ids, np.stack(list(current.values()))), strict=True
            ):
                found[int(item_id)] = np.asarray(vector, dtype=np.float32)
        return found

    def _explain(
        self,
        state: ProfileState,
        encoder: QueryEncoder,
        hits: Sequence[Hit],
        session: Session,
    ) -> dict[int, list[Contribution]]:
        """Per hit, the recent items with the largest decayed weight x similarity to it."""
        recent, decay = self._recency(state, encoder)
        if not recent or not hits:
            return {h.item_id: [] for h in hits}
        vectors = self._index_vectors(
            list({item_id for _, item_id, _ in recent} | {h.item_id for h in hits}), session
        )
        return {
            h.item_id: contributions(recent, decay, vectors, vectors[h.item_id])
            if h.item_id in vectors
            else []
            for h in hits
        }

    def _recency(
        self, state: ProfileState, encoder: QueryEncoder
    ) -> tuple[list[tuple[float, int, float]], np.ndarray]:
        """The buffer entries the query blends and each one's recency factor.

        The plain blend decays with its half-life; a trained model with its learned recency
        curve (or its chosen half-life) over the window it blends.
        """
        recent = [entry for entry in state.recent if entry[1] >= 0]
        config = getattr(encoder, "config", None)
        if config is not None:
            recent = recent[-int(config.buffer_size) :]
        ages = state.ref_time - np.array([t for t, _, _ in recent], dtype=np.float64)
        correction = getattr(encoder, "correction", None)
        if correction is not None:
            return recent, np.asarray(correction.event_weights(ages), dtype=np.float64)
        half_life = (
            float(config.half_life_s)
            if config is not None
            else float(getattr(encoder, "half_life", self.settings.blend_half_life))
        )
        return recent, exponential_decay(ages, half_life)

    def _cold_start_controlled(
        self,
        candidates: list[int],
        popular: list[tuple[int, int]],
        k: int,
        controls: Controls,
    ) -> Recommendation:
        scores = dict(popular)
        best = max(scores.values(), default=1)
        with self.db.read() as reading:
            if controls.filter.active:
                decided = self._filter_decisions(candidates, controls, reading)
                candidates = [i for i in candidates if decided[i]]
            pool = [Hit(item_id, scores[item_id] / best) for item_id in candidates]
            if controls.min_score is not None:
                pool = [h for h in pool if h.score >= controls.min_score]
            hits = self._diversify(pool[: controls.pool_size(k)], k, controls, reading)
            return Recommendation(
                self._describe(hits),
                COLD_START,
                self.index.version_id,
                self.index.model_version_id,
                {h.item_id: [] for h in hits} if controls.explain else None,
            )

    def cold_start(
        self,
        k: int,
        *,
        exclude: Collection[int] = (),
        categories: Sequence[str] = (),
        controls: Controls | None = None,
        now: float | None = None,
    ) -> Recommendation:
        """The cold-start list (for requests with nothing to personalise on)."""
        now = time.time() if now is None else now
        self.index.refresh()
        return self._cold_start(k, set(exclude), categories, now, controls=controls)
