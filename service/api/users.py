"""Users: recommendations, a summary of their activity, and deletion (events and profile)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, request
from sqlalchemy import func, select

from service.api.common import get_runtime, ranked
from service.validation import categories_param, iso, parse_flag, parse_k, path_id
from store.events import delete_user, get_user, user_events
from store.items import items_by_ids
from store.models import Event

bp = Blueprint("users", __name__, url_prefix="/v1/users")

RECENT_ITEMS = 10


@bp.get("/<user_id>/recommendations")
def recommendations(user_id: str) -> dict[str, Any]:
    """Top ``k`` items for the user; unknown users and users without events get cold start."""
    runtime = get_runtime()
    user_id = path_id(user_id, "user")
    k = parse_k(request.args.get("k"), runtime.settings.max_k)
    exclude_seen = parse_flag(request.args.get("exclude_seen"), "exclude_seen", default=True)
    categories = categories_param(request.args.getlist("category"))
    found = runtime.recommender.for_user(
        user_id, k, exclude_seen=exclude_seen, categories=categories
    )
    return {"user_id": user_id, **ranked(found), "strategy": found.strategy}


@bp.get("/<user_id>")
def show(user_id: str) -> dict[str, Any]:
    runtime = get_runtime()
    with runtime.db.read() as session:
        user = get_user(session, path_id(user_id, "user"))
        count, last = session.execute(
            select(func.count(), func.max(Event.timestamp)).where(Event.user_id == user.id)
        ).one()
        recent = user_events(session, user.id, newest_first=True, limit=RECENT_ITEMS)
        items = items_by_ids(session, [event.item_id for event in recent])
        return {
            "user_id": user.external_id,
            "event_count": int(count),
            "last_event_at": iso(recent[0].timestamp) if recent else iso(last),
            "recent_items": [
                {
                    "id": items[event.item_id].external_id,
                    "title": items[event.item_id].title,
                    "timestamp": iso(event.timestamp),
                    "type": event.type,
                }
                for event in recent
                if event.item_id in items
            ],
        }


@bp.delete("/<user_id>")
def delete(user_id: str) -> Response:
    """Remove the user with their events and profile (for erasure requests)."""
    runtime = get_runtime()
    with runtime.db.write() as session:
        delete_user(session, path_id(user_id, "user"))
    return Response(status=204)
