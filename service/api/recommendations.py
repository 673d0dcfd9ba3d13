"""Recommendations not tied to a stored user: anonymous sessions by example, and next pages.

``POST /v1/recommendations`` ranks for weighted examples (item ids, texts or raw vectors) held
in memory only; ``GET /v1/recommendations/<recomm_id>/next`` continues any earlier answer
(a user's or an anonymous one) without repeating an item.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from service import recommending
from service.api.common import get_runtime
from service.contract import operation, path_id
from service.schemas import Error, ExamplesBody, NextPageQuery, Recommendations

bp = Blueprint("recommendations", __name__, url_prefix="/v1/recommendations")


@bp.post("")
@operation(
    "Recommendations for weighted examples (item ids, texts, vectors): no user needed",
    body=ExamplesBody,
    response=Recommendations,
    response_description="Ranked items, with `skipped`",
)
def by_examples(body: ExamplesBody) -> dict[str, Any]:
    """Body ``{"examples": [{"item_id"|"text"|"vector", "weight"?}], "k"?, ...controls}``."""
    runtime = get_runtime()
    params = body.to_params()
    examples = [example.to_example() for example in body.examples]
    found, skipped = recommending.for_examples(runtime, examples, params)
    stored = {**params.as_json(), "examples": [e.as_json() for e in examples]}
    recomm_id = recommending.remember(runtime, found, user_id=None, params=stored)
    return {
        "recomm_id": recomm_id,
        **recommending.render(runtime, found, params),
        "skipped": skipped,
    }


@bp.get("/<recomm_id>/next")
@operation(
    "The next page of an earlier answer: no item repeats; 404 once expired",
    query=NextPageQuery,
    response=Recommendations,
    path={"recomm_id": "From an earlier recommendation answer"},
    responses={409: (Error, "Other requests kept paging this answer at the same time; retry")},
)
def next_page(recomm_id: str, query: NextPageQuery) -> dict[str, Any]:
    """The next ``k`` (default: the first request's) items, none answered before."""
    runtime = get_runtime()
    return recommending.next_page(runtime, path_id(recomm_id, "recommendation"), query.k)
