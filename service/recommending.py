"""Recommendation use cases behind the HTTP API: a user's request with its controls, and the
JSON answer (chosen item fields, explanations).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import select

from interest.recommend import COLD_START, Recommendation
from service.recommend_params import RecommendParams
from service.runtime import Runtime
from store.items import ids_by_external
from store.models import Item

SERVED_BY_MODEL = "correction_network"
SERVED_BY_BLEND = "decayed_blend"
SERVED_BY_COLD_START = "cold_start"


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
    excluded = resolve_exclude(runtime, params.exclude) | set(shown)
    return runtime.recommender.for_user(
        user_id,
        params.k,
        exclude_seen=params.exclude_seen,
        categories=params.categories,
        exclude=excluded,
        controls=params.controls() if needs_controls(params) else None,
    )


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


def render(runtime: Runtime, found: Recommendation, params: RecommendParams) -> dict[str, Any]:
    """``items`` (with ``properties``/``categories`` when asked, ``explanation`` when asked),
    ``index_version``, ``model_version``, ``strategy`` and ``served_by``."""
    wanted = set()
    if params.fields:
        wanted |= {item.item_id for item in found.items}
    explanations = found.explanations or {}
    for because in explanations.values():
        wanted |= {c.item_id for c in because}
    facts = _facts(runtime, wanted)
    path = served_by(found)
    items = []
    for item in found.items:
        entry: dict[str, Any] = {"id": item.id, "title": item.title, "score": float(item.score)}
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
        items.append(entry)
    return {
        "items": items,
        "index_version": found.index_version,
        "model_version": found.model_version,
        "strategy": found.strategy,
        "served_by": path,
    }


def _facts(runtime: Runtime, item_ids: set[int]) -> dict[int, tuple[str, str, list[str], dict]]:
    if not item_ids:
        return {}
    items = Item.__table__.c
    with runtime.db.read() as session:
        rows = session.execute(
            select(
                items.id, items.external_id, items.title, items.categories, items.properties
            ).where(items.id.in_(list(item_ids)))
        )
        return {
            item_id: (external_id, title, list(cats or []), dict(props or {}))
            for item_id, external_id, title, cats, props in rows
        }
