"""``POST /v1/events``: idempotent by event id; good entries are accepted, bad ones reported."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from service.api.common import get_metrics, get_runtime
from service.contract import EntryError, context, entry, operation
from service.schemas import EventEntry, EventsBody, Ingested

bp = Blueprint("events", __name__, url_prefix="/v1/events")


@bp.post("")
@operation(
    "Store events idempotently and update their users' profiles",
    body=EventsBody,
    response=Ingested,
    response_description="Good entries accepted, bad ones reported by index",
)
def ingest(body: EventsBody) -> dict[str, Any]:
    """Store new events and update their users' profiles in one transaction.

    Each entry is checked against `EventEntry` here (fields, types, finite values, timestamps
    at most a day ahead); unknown items and event types are rejected by ingest. ``rejected``
    lists ``{"index", "error"}`` by position in the request. An event id already stored counts
    as a duplicate and changes nothing, so a client may retry a whole batch safely. Unknown
    users are created.
    """
    runtime = get_runtime()
    ctx = context()  # one clock for the whole batch
    good, pre_rejected = [], []
    for index, raw in enumerate(body.events):
        try:
            good.append(entry(EventEntry, raw, ctx).to_input())
        except EntryError as exc:
            pre_rejected.append((index, str(exc)))
    if good:
        result = runtime.ingest(good, pre_rejected=pre_rejected)
        accepted, duplicates, rejected = result.accepted, result.duplicates, result.rejected
    else:
        accepted, duplicates, rejected = 0, 0, pre_rejected
    get_metrics().observe_ingest(accepted, duplicates, len(rejected))
    return {
        "accepted": accepted,
        "duplicates": duplicates,
        "rejected": [{"index": index, "error": error} for index, error in sorted(rejected)],
    }
