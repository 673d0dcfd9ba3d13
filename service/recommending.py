"""Recommendation use cases behind the HTTP API: a user's request with its controls, and the
JSON answer (chosen item fields, explanations).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
from sqlalchemy import select

from interest.ingest import raw_vectors
from interest.profile import ProfileState
from interest.recommend import COLD_START, Recommendation
from service.errors import ValidationError
from service.recommend_params import RecommendParams
from service.runtime import Runtime
from store.errors import Conflict, NotFound
from store.items import ids_by_external
from store.models import Item, RecommendationSession
from store.recommendations import (
    add_page,
    get_session,
    issued_at,
    new_recomm_id,
    session_row,
    unanswered_recent_ids,
)

SERVED_BY_MODEL = "correction_network"
SERVED_BY_BLEND = "decayed_blend"
SERVED_BY_COLD_START = "cold_start"
#: How long a read waits for the row of an answer another process has just given (its session
#: writer commits within ~50 ms; this bounds the wait for an id that never arrives).
JUST_ISSUED_WAIT_S = 1.0
#: How often a next page is computed again when concurrent requests on the same answer keep
#: claiming pages first (`store.recommendations.add_page`); then 409.
NEXT_PAGE_ATTEMPTS = 8


class WaitBudget:
    """How long this process may still spend waiting for just-issued answers: ``share`` of its
    time, up to ``cap`` seconds saved up. An id carries its issue time, so anyone can make one
    that looks just issued and whose row never comes: without a budget, each such request held
    a sync worker for `JUST_ISSUED_WAIT_S`, and two a second stopped a two-worker server. With
    it they get their 404 at once once the budget is spent; a real answer's row comes within
    ~50 ms and rarely needs any wait."""

    def __init__(self, share: float = 0.1, cap: float = 2 * JUST_ISSUED_WAIT_S) -> None:
        self.share, self.cap = share, cap
        self._left, self._at = cap, time.monotonic()
        self._lock = threading.Lock()

    def take(self, seconds: float) -> bool:
        """Spend ``seconds`` of waiting if the budget holds them."""
        with self._lock:
            now = time.monotonic()
            self._left = min(self.cap, self._left + (now - self._at) * self.share)
            self._at = now
            if self._left < seconds:
                return False
            self._left -= seconds
            return True


_WAITS = WaitBudget()


def served_by(found: Recommendation) -> str:
    """Which path ranked the answer: the cold-start list, the trained model or the plain blend."""
    if found.strategy == COLD_START:
        return SERVED_BY_COLD_START
    return SERVED_BY_MODEL if found.model_version is not None else SERVED_BY_BLEND


def resolve_exclude(runtime: Runtime, external_ids: Collection[str]) -> set[int]:
    """Internal ids of the caller's ``exclude`` list (one query per 5,000; unknown ids ignored)."""
    if not external_ids:
        return set()
    with runtime.db.read() as session:
        return set(ids_by_external(session, external_ids).values())


def for_user(
    runtime: Runtime, user_id: str, params: RecommendParams, *, shown: Collection[int] = ()
) -> Recommendation:
    """The user's recommendations with the request's controls, never repeating ``shown``;
    while an experiment runs, from the user's arm (and marked with it)."""
    excluded = resolve_exclude(runtime, params.exclude) | set(shown)
    assignment = runtime.experiments.assign(user_id)
    found = assignment.recommender.for_user(
        user_id,
        params.k,
        exclude_seen=params.exclude_seen,
        categories=params.categories,
        exclude=excluded,
        controls=params.controls() if needs_controls(params) else None,
    )
    return assignment.label(found)


def needs_controls(params: RecommendParams) -> bool:
    """False for a plain request (k, exclude_seen, categories in any mode): the fast path."""
    return bool(
        params.exclude
        or params.properties
        or params.categories_mode != "any"
        or params.min_score is not None
        or params.diversity > 0
        or params.explain
    )


def ranked(recommendation: Recommendation) -> dict[str, Any]:
    """``items``, ``index_version`` and ``model_version`` of a ranked answer (every ranking
    endpoint's shape; recommendations add to it)."""
    return {
        "items": [
            {"id": item.id, "title": item.title, "score": float(item.score)}
            for item in recommendation.items
        ],
        "index_version": recommendation.index_version,
        "model_version": recommendation.model_version,
    }


def render(runtime: Runtime, found: Recommendation, params: RecommendParams) -> dict[str, Any]:
    """``items`` (with ``properties``/``categories`` when asked, ``explanation`` when asked),
    ``index_version``, ``model_version``, ``strategy``, ``served_by``, and the ``experiment``
    and ``arm`` that served it (null outside an experiment)."""
    wanted = set()
    if params.fields:
        wanted |= {item.item_id for item in found.items}
    explanations = found.explanations or {}
    for because in explanations.values():
        wanted |= {c.item_id for c in because}
    facts = _facts(runtime, wanted)
    path = served_by(found)
    body = ranked(found)
    for item, entry in zip(found.items, body["items"], strict=True):
        if params.fields and item.item_id in facts:
            _, _, categories, properties = facts[item.item_id]
            entry["properties"] = {
                name: properties[name]
                for name in params.fields
                if name != "categories" and name in properties
            }
            if "categories" in params.fields:
                entry["categories"] = list(categories)
        if params.explain:
            entry["explanation"] = {
                "served_by": path,
                "because": [
                    {
                        "id": facts[c.item_id][0],
                        "title": facts[c.item_id][1],
                        "weight": round(c.weight, 6),
                        "similarity": round(c.similarity, 6),
                        "contribution": round(c.contribution, 6),
                    }
                    for c in explanations.get(item.item_id, [])
                    if c.item_id in facts
                ],
            }
    body.update(strategy=found.strategy, served_by=path, experiment=found.experiment, arm=found.arm)
    return body


def _facts(runtime: Runtime, item_ids: set[int]) -> dict[int, tuple[str, str, list[str], dict]]:
    """Id, title, categories and properties of the live items among ``item_ids``: a deleted
    item is never named again, not even as the reason for another (``because``)."""
    if not item_ids:
        return {}
    items = Item.__table__.c
    with runtime.db.read() as session:
        rows = session.execute(
            select(
                items.id, items.external_id, items.title, items.categories, items.properties
            ).where(items.id.in_(list(item_ids)), items.deleted_at.is_(None))
        )
        return {
            item_id: (external_id, title, list(cats or []), dict(props or {}))
            for item_id, external_id, title, cats, props in rows
        }


# -- pagination ------------------------------------------------------------------------------
def remember(
    runtime: Runtime,
    found: Recommendation,
    *,
    user_id: str | None,
    params: Mapping[str, Any],
) -> str:
    """Queue the answer as a new recommendation session (`service.session_writer`); return
    its ``recomm_id``."""
    recomm_id = new_recomm_id()
    runtime.sessions.add(
        session_row(
            recomm_id=recomm_id,
            user_external_id=user_id,
            params=dict(params),
            shown=[item.item_id for item in found.items],
            strategy=found.strategy,
            model_version_id=found.model_version,
            arm=found.arm_label,
            ttl_s=runtime.settings.recommendation_ttl_s,
        )
    )
    return recomm_id


def stored_session(runtime: Runtime, recomm_id: str) -> RecommendationSession:
    """The answer's session row; `NotFound` when unknown or expired.

    The row of an answer this process gave is written first (flush). One that another process
    gave less than `JUST_ISSUED_WAIT_S` ago may still be queued there: its id carries the time
    it was issued, and the read is retried until that much time has passed.
    """
    runtime.sessions.flush()
    pauses = _pauses_until(_just_issued_deadline([recomm_id], time.time()))
    while True:
        try:
            with runtime.db.read() as session:
                return get_session(session, recomm_id)
        except NotFound:
            if not next(pauses, False):
                raise


def await_referenced_answers(runtime: Runtime) -> None:
    """Wait until the answers that recent events name have their session rows, for those
    another process gave less than `JUST_ISSUED_WAIT_S` ago (its writer commits them within
    milliseconds; an id whose row never comes is given up on after that long): `/v1/stats`
    then counts an event whatever process gave its answer. This process's rows are written
    first (flush)."""
    runtime.sessions.flush()
    now = time.time()
    pauses = None
    while True:
        with runtime.db.read() as session:
            missing = unanswered_recent_ids(session, now - JUST_ISSUED_WAIT_S)
        if not missing:
            return
        pauses = pauses or _pauses_until(_just_issued_deadline(missing, now))
        if not next(pauses, False):
            return


def _just_issued_deadline(recomm_ids: Collection[str], now: float) -> float:
    """Until when a read may wait for the rows of ``recomm_ids``: `JUST_ISSUED_WAIT_S` after
    the latest was issued, for ids issued that recently (clocks may differ); else now."""
    recent = [
        issued
        for issued in map(issued_at, recomm_ids)
        if issued is not None and abs(now - issued) < JUST_ISSUED_WAIT_S
    ]
    return min(max(recent), now) + JUST_ISSUED_WAIT_S if recent else now


def _pauses_until(deadline: float) -> Iterator[bool]:
    """Sleeps of 2 ms growing to 50 ms, one per ``next`` (which gives True), while one more
    fits before ``deadline`` and in this process's `WaitBudget`; then exhausted."""
    pause = 0.002
    while time.time() + pause <= deadline and _WAITS.take(pause):
        time.sleep(pause)
        yield True
        pause = min(pause * 1.5, 0.05)


def next_page(runtime: Runtime, recomm_id: str, k: int | None) -> dict[str, Any]:
    """The next ``k`` items of an earlier answer, none of them answered before."""
    row = stored_session(runtime, recomm_id)
    user_id, stored, shown = row.user_external_id, dict(row.params), list(row.shown)
    examples = stored.pop("examples", None)
    params = RecommendParams.from_json(stored)
    if k is not None:
        params = params.with_k(k)
    parsed = [Example(**example) for example in examples or []]
    skipped: list[dict[str, Any]] | None = None
    # Optimistic: the page is computed outside any lock and claimed only if no other request
    # added one meanwhile; else computed again after the items shown now.
    for _ in range(NEXT_PAGE_ATTEMPTS):
        if user_id is not None:
            found = for_user(runtime, user_id, params, shown=shown)
        else:
            found, skipped = for_examples(runtime, parsed, params, shown=shown)
        page = [item.item_id for item in found.items]
        newer = runtime.db.run_write(
            partial(
                add_page,
                recomm_id=recomm_id,
                item_ids=page,
                after=shown,
                ttl_s=runtime.settings.recommendation_ttl_s,
            )
        )
        if newer is None:
            break
        shown = newer
    else:
        raise Conflict(f"answer {recomm_id!r} is being paged by other requests: try again")
    body: dict[str, Any] = {"recomm_id": recomm_id}
    if user_id is not None:
        body["user_id"] = user_id
    body.update(render(runtime, found, params))
    if skipped is not None:
        body["skipped"] = skipped
    return body


# -- anonymous requests ----------------------------------------------------------------------
@dataclass(frozen=True)
class Example:
    """One weighted example of an anonymous request: an item id, a text or a raw vector."""

    weight: float = 1.0
    item_id: str | None = None
    text: str | None = None
    vector: list[float] | None = field(default=None)

    def as_json(self) -> dict[str, Any]:
        return {
            "weight": self.weight,
            "item_id": self.item_id,
            "text": self.text,
            "vector": self.vector,
        }


def state_from_examples(
    runtime: Runtime, examples: Sequence[Example], now: float
) -> tuple[ProfileState, list[dict[str, Any]], set[int]]:
    """An in-memory profile from the examples, the skipped ones, and the example items' ids.

    Examples are folded in the order given, one second apart, so the last is the most recent.
    Unknown item ids (and items without a vector yet) are skipped, not an error. The state
    carries every example's raw vector (a trained model maps those of items it has no row for
    into its query); text and vector examples stand in the buffer as ids ``-1 - index``.
    """
    dim = runtime.embedding_dim
    state = ProfileState.empty(runtime.settings.half_lives, dim)
    skipped: list[dict[str, Any]] = []
    wanted = [e.item_id for e in examples if e.item_id is not None]
    with runtime.db.read() as session:
        ids = ids_by_external(session, wanted) if wanted else {}
        vectors = raw_vectors(session, list(ids.values()), runtime.settings.embedder_model)
    texts = [e.text for e in examples if e.text is not None]
    embedded = iter(runtime.embedder.embed(texts)) if texts else iter(())
    used: set[int] = set()
    for index, example in enumerate(examples):
        item_id = -1 - index
        if example.item_id is not None:
            internal = ids.get(example.item_id)
            if internal is None or internal not in vectors:
                reason = "unknown item" if internal is None else "item has no vector yet"
                skipped.append({"index": index, "item_id": example.item_id, "reason": reason})
                continue
            vector, item_id = vectors[internal], internal
            used.add(internal)
        elif example.text is not None:
            vector = np.asarray(next(embedded), dtype=np.float32)
        else:
            vector = np.asarray(example.vector, dtype=np.float32)
            if vector.shape != (dim,):
                raise ValidationError(
                    f"examples[{index}].vector has {vector.size} numbers; the embedder's "
                    f"dimension is {dim}"
                )
        at = now - (len(examples) - index)
        state.apply(vector, example.weight, at, item_id, runtime.settings.recent_buffer_size)
        state.text_vectors[item_id] = vector
    return state, skipped, used


def for_examples(
    runtime: Runtime,
    examples: Sequence[Example],
    params: RecommendParams,
    *,
    shown: Collection[int] = (),
) -> tuple[Recommendation, list[dict[str, Any]]]:
    """Recommendations for an anonymous session; the example items are left out unless
    ``exclude_seen`` is false. With no usable example, the cold-start list."""
    now = time.time()
    state, skipped, used = state_from_examples(runtime, examples, now)
    excluded = resolve_exclude(runtime, params.exclude) | set(shown)
    if params.exclude_seen:
        excluded |= used
    controls = params.controls() if needs_controls(params) else None
    recommender = runtime.recommender
    if state.event_count == 0 or not np.any(state.weight_sums):
        found = recommender.cold_start(
            params.k, exclude=excluded, categories=params.categories, controls=controls
        )
    else:
        runtime.index.refresh()
        found = recommender.for_state(
            state,
            params.k,
            exclude=excluded,
            categories=params.categories,
            now=now,
            controls=controls,
        )
    return found, skipped


#: At most this many examples in one anonymous request.
MAX_EXAMPLES = 100
