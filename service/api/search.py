"""``POST /v1/search``: semantic search over the catalogue by free text."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from service.api.common import get_runtime, ranked
from service.validation import json_body, parse_k, parse_query, string_list

bp = Blueprint("search", __name__, url_prefix="/v1/search")


@bp.post("")
def search() -> dict[str, Any]:
    """Body ``{"query": str, "k"?: int, "categories"?: [str]}``; answers ranked ``items``."""
    runtime = get_runtime()
    body = json_body()
    query = parse_query(body.get("query"))
    k = parse_k(body.get("k"), runtime.settings.max_k, from_query=False)
    categories = string_list(body["categories"], "categories") if "categories" in body else []
    vector = runtime.embedder.embed([query])[0]
    found = runtime.recommender.search_vector(vector, k, categories=categories)
    return {"query": query, **ranked(found)}
