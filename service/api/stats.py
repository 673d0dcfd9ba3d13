"""``GET /v1/stats``: click-through of recommendation answers by model version (and arm).

An answer is one recommendation response (each `/next` page adds its items to it); events that
carry its ``recomm_id`` are attributed to the model version and experiment arm that served it
(stored as ``"<experiment>:<arm>"``, answered as separate ``experiment`` and ``arm`` fields).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from service.api.common import get_runtime
from service.contract import operation
from service.recommending import await_referenced_answers
from service.schemas import Stats, StatsQuery
from service.validation import iso
from store.recommendations import attribution_counts

bp = Blueprint("stats", __name__, url_prefix="/v1/stats")


@bp.get("")
@operation(
    "Click-through of recommendation answers by model version and experiment arm",
    query=StatsQuery,
    response=Stats,
    response_description="Counts per model version and arm",
)
def show(query: StatsQuery) -> dict[str, Any]:
    """``since`` (ISO 8601 or epoch seconds) limits the answers counted by when they were made."""
    runtime = get_runtime()
    since = query.since
    positive = {kind for kind, weight in runtime.settings.event_weights.items() if weight > 0}
    # Events count whatever process gave their answer: its row may still be on the way.
    await_referenced_answers(runtime)
    with runtime.db.read() as session:
        groups = attribution_counts(session, since)
    rows = []
    for group in sorted(
        groups, key=lambda g: (g["model_version"] is None, g["model_version"] or 0, g["arm"] or "")
    ):
        engaged = sum(n for kind, n in group["events"].items() if kind in positive)
        shown = group["items_shown"]
        experiment, _, arm = (group["arm"] or "").partition(":")
        rows.append(
            {
                **group,
                "experiment": experiment or None,
                "arm": arm or None,
                "positive_events": engaged,
                "click_through": round(engaged / shown, 6) if shown else None,
            }
        )
    return {"since": iso(since), "by_model_version": rows}
