"""``POST /v1/search``: semantic search over the catalogue by free text."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from service.api.common import get_runtime
from service.contract import operation
from service.recommending import ranked
from service.schemas import SearchAnswer, SearchBody

bp = Blueprint("search", __name__, url_prefix="/v1/search")


@bp.post("")
@operation("Semantic search over the catalogue", body=SearchBody, response=SearchAnswer)
def search(body: SearchBody) -> dict[str, Any]:
    """Body ``{"query": str, "k"?: int, "categories"?: [str]}``; answers ranked ``items``."""
    runtime = get_runtime()
    vector = runtime.embedder.embed([body.query])[0]
    found = runtime.content_recommender().search_vector(vector, body.k, categories=body.categories)
    return {"query": body.query, **ranked(found)}
