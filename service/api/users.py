"""Users: recommendations, a summary of their activity, and deletion (events and profile)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response
from sqlalchemy import func, select

from interest.merge import SameUser, merge_users
from service import recommending
from service.api.common import get_runtime
from service.contract import operation, path_id
from service.errors import ValidationError
from service.recommend_params import RecommendBody, RecommendParams, RecommendQuery
from service.schemas import MergeBody, Merged, Recommendations, UserSummary
from service.validation import iso
from store.events import delete_user, get_user, user_events
from store.items import items_by_ids
from store.models import Event

bp = Blueprint("users", __name__, url_prefix="/v1/users")

RECENT_ITEMS = 10
USER_ID = {"user_id": "The caller's user id"}


@bp.post("/merge")
@operation(
    "Join an anonymous user's events into a user's profile (idempotent)",
    body=MergeBody,
    response=Merged,
    response_description="Merged (or nothing left to merge)",
)
def merge(body: MergeBody) -> dict[str, Any]:
    """Body ``{"from": anonymous id, "into": user id}``: move the events, rebuild the target's
    profile and delete the anonymous user, in one transaction. Idempotent: merging a user that
    no longer exists answers ``merged: false`` and changes nothing."""
    runtime = get_runtime()
    runtime.sessions.flush()  # the anonymous user's answers from this process move too
    try:
        result = merge_users(
            runtime.db,
            body.from_,
            body.into,
            runtime.profile_config,
            runtime.settings.embedder_model,
        )
    except SameUser as exc:
        raise ValidationError(str(exc)) from exc
    return {
        "from": body.from_,
        "into": body.into,
        "merged": result.merged,
        "moved_events": result.moved_events,
        "event_count": result.event_count,
    }


@bp.get("/<user_id>/recommendations")
@operation(
    "Top k items for the user (cold start for unknown users), with controls",
    query=RecommendQuery,
    response=Recommendations,
    path=USER_ID,
)
def recommendations(user_id: str, query: RecommendQuery) -> dict[str, Any]:
    """Top ``k`` items for the user; unknown users and users without events get cold start.

    Controls as query parameters (lists repeat or are comma-separated): ``exclude``,
    ``category``/``categories`` with ``categories_mode``, ``min_score``, ``diversity``,
    ``explain``, ``fields``. The JSON body of the POST form also takes property filters.
    """
    return _answer(user_id, query.to_params())


@bp.post("/<user_id>/recommendations")
@operation(
    "Top k items for the user, controls and property filters in a JSON body",
    body=RecommendBody,
    response=Recommendations,
    path=USER_ID,
)
def recommendations_with_body(user_id: str, body: RecommendBody) -> dict[str, Any]:
    """The same as the GET form, with the controls in a JSON body (and ``filter.properties``)."""
    return _answer(user_id, body.to_params())


def _answer(raw_user_id: str, params: RecommendParams) -> dict[str, Any]:
    runtime = get_runtime()
    user_id = path_id(raw_user_id, "user")
    found = recommending.for_user(runtime, user_id, params)
    recomm_id = recommending.remember(runtime, found, user_id=user_id, params=params.as_json())
    return {
        "user_id": user_id,
        "recomm_id": recomm_id,
        **recommending.render(runtime, found, params),
    }


@bp.get("/<user_id>")
@operation("A user's activity summary", response=UserSummary, path=USER_ID)
def show(user_id: str) -> dict[str, Any]:
    runtime = get_runtime()
    with runtime.db.read() as session:
        user = get_user(session, path_id(user_id, "user"))
        count = session.scalar(select(func.count()).where(Event.user_id == user.id))
        recent = user_events(session, user.id, newest_first=True, limit=RECENT_ITEMS)
        items = items_by_ids(session, [event.item_id for event in recent])
        return {
            "user_id": user.external_id,
            "event_count": int(count),
            # The newest event heads `recent` (newest first): no separate max() needed.
            "last_event_at": iso(recent[0].timestamp) if recent else None,
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
@operation("Erase the user, their events, profile and answers", status=204, path=USER_ID)
def delete(user_id: str) -> Response:
    """Remove the user with their events, profile and answers (for erasure requests)."""
    runtime = get_runtime()
    with runtime.db.write() as session:
        delete_user(session, path_id(user_id, "user"))
    return Response(status=204)
