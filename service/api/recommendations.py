"""Recommendations not tied to a stored user: anonymous sessions by example, and next pages.

``POST /v1/recommendations`` ranks for weighted examples (item ids, texts or raw vectors) held
in memory only; ``GET /v1/recommendations/<recomm_id>/next`` continues any earlier answer
(a user's or an anonymous one) without repeating an item.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request

from service import recommend_params, recommending
from service.api.common import get_runtime
from service.validation import MAX_QUERY_LENGTH, json_body, parse_k, path_id

bp = Blueprint("recommendations", __name__, url_prefix="/v1/recommendations")


@bp.post("")
def by_examples() -> dict[str, Any]:
    """Body ``{"examples": [{"item_id"|"text"|"vector", "weight"?}], "k"?, ...controls}``."""
    runtime = get_runtime()
    body = json_body()
    params = recommend_params.from_body(body, runtime.settings.max_k, extra=frozenset({"examples"}))
    examples = recommending.parse_examples(body.get("examples"), MAX_QUERY_LENGTH)
    found, skipped = recommending.for_examples(runtime, examples, params)
    stored = {**params.as_json(), "examples": [e.as_json() for e in examples]}
    recomm_id = recommending.remember(runtime, found, user_id=None, params=stored)
    return {
        "recomm_id": recomm_id,
        **recommending.render(runtime, found, params),
        "skipped": skipped,
    }


@bp.get("/<recomm_id>/next")
def next_page(recomm_id: str) -> dict[str, Any]:
    """The next ``k`` (default: the first request's) items, none answered before."""
    runtime = get_runtime()
    raw_k = request.args.get("k")
    k = parse_k(raw_k, runtime.settings.max_k) if raw_k is not None else None
    return recommending.next_page(runtime, path_id(recomm_id, "recommendation"), k)
