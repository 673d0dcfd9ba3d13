"""The OpenAPI 3.1 description of the HTTP API, served at ``/openapi.json``, and ``/docs``.

The API validates requests by hand (`service.validation`); this module states the same contract
for clients, from the same limits (`Settings.max_batch_size`, `max_k`, the id and query lengths).
tests/service/test_api_schema.py runs schemathesis against the real app with it, so the
document and the code cannot drift apart unnoticed. ``/docs`` renders the paths as plain HTML
(no JavaScript, nothing fetched from a CDN).
"""

from __future__ import annotations

import html
from typing import Any

from flask import Blueprint, url_for

from service.api.common import get_runtime
from service.auth import ENDPOINT_SCOPES
from service.recommend_params import MAX_EXCLUDE, MAX_FIELDS
from service.recommending import MAX_EXAMPLES
from service.validation import (
    MAX_EVENT_TYPE_LENGTH,
    MAX_EVENT_VALUE,
    MAX_QUERY_LENGTH,
    MAX_RECOMM_ID_LENGTH,
)
from store.models import EXTERNAL_ID_LENGTH
from store.settings import Settings

bp = Blueprint("docs", __name__)

JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


ERRORS = {
    "400": "Body is not valid JSON (`invalid_json`)",
    "401": "Missing, invalid or revoked API key (`unauthorized`)",
    "403": "The key lacks the scope this endpoint needs (`forbidden`)",
    "404": "Unknown id or route (`not_found`)",
    "405": "Method not allowed on this path (`method_not_allowed`)",
    "409": "A concurrent write conflicted; retry (`conflict`)",
    "413": "Body or batch over the limit (`payload_too_large`)",
    "415": "Body is not `application/json` (`unsupported_media_type`)",
    "422": "Fields with wrong types or values (`validation_error`)",
    "503": "Database or embedding model unavailable; retry (`unavailable`)",
}
READ_ERRORS = ("401", "403", "404", "405", "422", "503")
BODY_ERRORS = ("400", "401", "403", "404", "405", "409", "413", "415", "422", "503")


def _errors(codes: tuple[str, ...]) -> dict[str, Any]:
    return {code: {"$ref": f"#/components/responses/E{code}"} for code in codes}


def _id_param(name: str, what: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": f"The caller's {what} id",
        "schema": {"type": "string", "minLength": 1, "maxLength": EXTERNAL_ID_LENGTH},
    }


def _k_param(max_k: int) -> dict[str, Any]:
    return {
        "name": "k",
        "in": "query",
        "description": "How many items to answer",
        "schema": {"type": "integer", "minimum": 1, "maximum": max_k, "default": 10},
    }


CATEGORY_PARAM = {
    "name": "category",
    "in": "query",
    "description": "Only items in these categories (repeat or comma-separate)",
    "schema": {"type": "array", "items": {"type": "string"}},
    "style": "form",
    "explode": True,
}


def _list_param(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "description": description,
        "schema": {"type": "array", "items": {"type": "string"}},
        "style": "form",
        "explode": True,
    }


#: The controls of `GET /v1/users/{user_id}/recommendations` beyond k, exclude_seen, category.
CONTROL_PARAMS = [
    _list_param("exclude", "Item ids never to return (repeat or comma-separate)"),
    _list_param("categories", "Same as `category`"),
    {
        "name": "categories_mode",
        "in": "query",
        "description": "`any`: an item in one of the categories; `all`: in every one",
        "schema": {"type": "string", "enum": ["any", "all"], "default": "any"},
    },
    {
        "name": "min_score",
        "in": "query",
        "description": "Leave out items scoring below this",
        "schema": {"type": "number"},
    },
    {
        "name": "diversity",
        "in": "query",
        "description": "0 (by relevance) to 1: maximal marginal relevance over a larger pool",
        "schema": {"type": "number", "minimum": 0, "maximum": 1, "default": 0},
    },
    {
        "name": "explain",
        "in": "query",
        "description": "Per item, the user's items that pulled it up most, and the serving path",
        "schema": {"type": "boolean", "default": False},
    },
    _list_param("fields", "Item properties to return with each item (and `categories`)"),
]


def recommend_body(settings: Settings) -> dict[str, Any]:
    """The JSON controls of a recommendation request (the POST forms)."""
    strings = {"type": "array", "items": {"type": "string"}}
    condition = {
        "description": "A value (equality; a list property matches when it contains it) or "
        "operators: eq, ne, in (a list), gt, gte, lt, lte (numbers or ISO 8601 dates)",
    }
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "k": {"type": "integer", "minimum": 1, "maximum": settings.max_k, "default": 10},
            "exclude_seen": {"type": "boolean", "default": True},
            "exclude": {**strings, "maxItems": MAX_EXCLUDE},
            "categories": strings,
            "categories_mode": {"type": "string", "enum": ["any", "all"]},
            "filter": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "categories": strings,
                    "categories_mode": {"type": "string", "enum": ["any", "all"]},
                    "properties": {
                        "type": "object",
                        "additionalProperties": condition,
                        "description": 'e.g. {"color": "red", "price": {"gte": 1, "lt": 10}}',
                    },
                },
            },
            "min_score": {"type": "number"},
            "diversity": {"type": "number", "minimum": 0, "maximum": 1},
            "explain": {"type": "boolean"},
            "fields": {**strings, "maxItems": MAX_FIELDS},
        },
    }


def examples_body(settings: Settings) -> dict[str, Any]:
    body = recommend_body(settings)
    example = {
        "type": "object",
        "additionalProperties": False,
        "description": "Exactly one of item_id, text, vector; weight may be negative",
        "properties": {
            "item_id": {"type": "string", "minLength": 1},
            "text": {"type": "string", "minLength": 1, "maxLength": MAX_QUERY_LENGTH},
            "vector": {"type": "array", "items": {"type": "number"}},
            "weight": {"type": "number", "default": 1},
        },
    }
    body["required"] = ["examples"]
    body["properties"] = {
        "examples": {"type": "array", "minItems": 1, "maxItems": MAX_EXAMPLES, "items": example},
        **body["properties"],
    }
    return body


def _components(settings: Settings) -> dict[str, Any]:
    text = {"type": "string", "minLength": 1}
    ident = {"type": "string", "minLength": 1, "maxLength": EXTERNAL_ID_LENGTH}
    timestamp = {
        "description": "ISO 8601 (no zone means UTC) or epoch seconds",
        "oneOf": [{"type": "string", "format": "date-time"}, {"type": "number"}],
    }
    nullable_time = {"type": ["string", "null"], "format": "date-time"}
    ranked = {
        "items": {"type": "array", "items": _ref("RankedItem")},
        "index_version": {"type": ["integer", "null"]},
        "model_version": {"type": ["integer", "null"]},
    }
    schemas: dict[str, Any] = {
        "Error": {
            "type": "object",
            "required": ["error"],
            "additionalProperties": False,
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": {"type": "string"},
                        "message": {"type": "string"},
                        "details": {"type": "array", "items": _ref("EntryError")},
                    },
                }
            },
        },
        "EntryError": {
            "type": "object",
            "required": ["index", "error"],
            "properties": {"index": {"type": "integer"}, "error": {"type": "string"}},
        },
        "ItemInput": {
            "type": "object",
            "required": ["id", "title"],
            "additionalProperties": False,
            "properties": {
                "id": ident,
                "title": text,
                "text": {"type": ["string", "null"]},
                "categories": {"type": ["array", "null"], "items": {"type": "string"}},
                "properties": {"type": ["object", "null"]},
                "available": {"type": "boolean", "default": True},
                "expires_at": {"oneOf": [*timestamp["oneOf"], {"type": "null"}]},
            },
        },
        "Item": {
            "type": "object",
            "required": ["id", "title", "categories", "properties", "available", "has_vector"],
            "properties": {
                "id": {"type": "string"},
                "title": {"type": "string"},
                "text": {"type": ["string", "null"]},
                "categories": {"type": "array", "items": {"type": "string"}},
                "properties": {"type": "object"},
                "available": {"type": "boolean"},
                "expires_at": nullable_time,
                "created_at": nullable_time,
                "updated_at": nullable_time,
                "has_vector": {"type": "boolean"},
            },
        },
        "EventInput": {
            "type": "object",
            "required": ["id", "user_id", "item_id", "type", "timestamp"],
            "additionalProperties": False,
            "properties": {
                "id": {**ident, "description": "Idempotency key: a stored id is a duplicate"},
                "user_id": ident,
                "item_id": ident,
                "type": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": MAX_EVENT_TYPE_LENGTH,
                    "description": "One of DRIFTREC_EVENT_WEIGHTS: "
                    + ", ".join(sorted(settings.event_weights)),
                },
                "value": {
                    "type": ["number", "null"],
                    "minimum": -MAX_EVENT_VALUE,
                    "maximum": MAX_EVENT_VALUE,
                },
                "timestamp": {**timestamp, "description": "At most one day in the future"},
                "recomm_id": {
                    "type": ["string", "null"],
                    "minLength": 1,
                    "maxLength": MAX_RECOMM_ID_LENGTH,
                    "description": "The recommendation answer the event came from (attribution)",
                },
            },
        },
        "RankedItem": {
            "type": "object",
            "required": ["id", "title", "score"],
            "properties": {
                "id": {"type": "string"},
                "title": {"type": "string"},
                "score": {"type": "number"},
            },
        },
        "RecommendedItem": {
            "type": "object",
            "required": ["id", "title", "score"],
            "properties": {
                "id": {"type": "string"},
                "title": {"type": "string"},
                "score": {"type": "number"},
                "properties": {"type": "object", "description": "The `fields` asked for"},
                "categories": {"type": "array", "items": {"type": "string"}},
                "explanation": {
                    "type": "object",
                    "required": ["served_by", "because"],
                    "properties": {
                        "served_by": _ref("ServedBy"),
                        "because": {
                            "type": "array",
                            "items": _object(
                                ["id", "title", "weight", "similarity", "contribution"],
                                {
                                    "id": {"type": "string"},
                                    "title": {"type": "string"},
                                    "weight": {
                                        "type": "number",
                                        "description": "Event weight x recency decay",
                                    },
                                    "similarity": {"type": "number"},
                                    "contribution": {
                                        "type": "number",
                                        "description": "weight x similarity",
                                    },
                                },
                            ),
                        },
                    },
                },
            },
        },
        "ServedBy": {
            "type": "string",
            "enum": ["correction_network", "decayed_blend", "cold_start"],
        },
        "Recommendations": {
            "type": "object",
            "required": [
                "recomm_id",
                "items",
                "index_version",
                "model_version",
                "strategy",
                "served_by",
                "experiment",
                "arm",
            ],
            "properties": {
                "recomm_id": {
                    "type": "string",
                    "description": "Continue with GET /v1/recommendations/{recomm_id}/next",
                },
                "user_id": {"type": "string"},
                "items": {"type": "array", "items": _ref("RecommendedItem")},
                "skipped": {
                    "type": "array",
                    "description": "Anonymous requests: examples whose item is unknown",
                    "items": _object(
                        ["index", "item_id", "reason"],
                        {
                            "index": {"type": "integer"},
                            "item_id": {"type": "string"},
                            "reason": {"type": "string"},
                        },
                    ),
                },
                "index_version": {"type": ["integer", "null"]},
                "model_version": {"type": ["integer", "null"]},
                "strategy": {"type": "string", "enum": ["personalized", "cold_start"]},
                "served_by": _ref("ServedBy"),
                "experiment": {
                    "type": ["string", "null"],
                    "description": "The running experiment (`driftrec experiment start`), if any",
                },
                "arm": {
                    "type": ["string", "null"],
                    "enum": ["control", "treatment", None],
                    "description": "The experiment arm that served this user; null outside one",
                },
            },
        },
        "Ranked": {
            "type": "object",
            "required": ["items", "index_version", "model_version"],
            "properties": ranked,
        },
    }
    responses = {
        f"E{code}": _json(_ref("Error"), description) for code, description in ERRORS.items()
    }
    return {
        "schemas": schemas,
        "responses": responses,
        "securitySchemes": {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "An API key from `driftrec keys create`",
            },
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        },
    }


def _operation(
    endpoint: str,
    summary: str,
    responses: dict[str, Any],
    *,
    parameters: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    scope = ENDPOINT_SCOPES[endpoint]
    operation: dict[str, Any] = {
        "operationId": endpoint.replace(".", "_"),
        "summary": summary,
        "description": f"Needs an API key with the `{scope}` scope (`admin` implies all).",
        "x-scope": scope,
        "responses": responses,
    }
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        operation["requestBody"] = {"required": True, "content": {JSON: {"schema": body}}}
    return operation


def _object(required: list[str], properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties}


def build_spec(settings: Settings, *, server_url: str | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document for an app with these settings."""
    batch = settings.max_batch_size
    k = _k_param(settings.max_k)
    ranked_props = _components(settings)["schemas"]["Ranked"]["properties"]
    int_ = {"type": "integer"}
    flag = {
        "name": "exclude_seen",
        "in": "query",
        "description": "Leave out items the user has interacted with",
        "schema": {"type": "boolean", "default": True},
    }
    no_content = {"204": {"description": "Done"}}
    paths: dict[str, Any] = {
        "/v1/items": {
            "put": _operation(
                "items.upsert",
                "Insert or update items (all or nothing) and embed them",
                {
                    "200": _json(
                        _object(
                            ["upserted", "embedded", "index_version"],
                            {
                                "upserted": int_,
                                "embedded": int_,
                                "index_version": {"type": ["integer", "null"]},
                            },
                        ),
                        "Items written; searchable in every worker",
                    ),
                    **_errors(BODY_ERRORS),
                },
                body={
                    "type": "object",
                    "required": ["items"],
                    "properties": {
                        "items": {"type": "array", "maxItems": batch, "items": _ref("ItemInput")}
                    },
                },
            )
        },
        "/v1/items/{item_id}": {
            "parameters": [_id_param("item_id", "item")],
            "get": _operation(
                "items.show",
                "One item",
                {"200": _json(_ref("Item"), "The item"), **_errors(READ_ERRORS)},
            ),
            "delete": _operation(
                "items.delete",
                "Soft-delete an item: never recommended or returned again",
                {**no_content, **_errors(READ_ERRORS)},
            ),
        },
        "/v1/items/{item_id}/similar": {
            "parameters": [_id_param("item_id", "item")],
            "get": _operation(
                "items.similar",
                "Nearest items to this one",
                {
                    "200": _json(
                        _object(
                            ["item_id", *ranked_props],
                            {"item_id": {"type": "string"}, **ranked_props},
                        ),
                        "Ranked items",
                    ),
                    **_errors(READ_ERRORS),
                },
                parameters=[k, CATEGORY_PARAM],
            ),
        },
        "/v1/search": {
            "post": _operation(
                "search.search",
                "Semantic search over the catalogue",
                {
                    "200": _json(
                        _object(
                            ["query", *ranked_props], {"query": {"type": "string"}, **ranked_props}
                        ),
                        "Ranked items",
                    ),
                    **_errors(BODY_ERRORS),
                },
                body={
                    "type": "object",
                    "required": ["query"],
                    "properties": {
                        "query": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": MAX_QUERY_LENGTH,
                            "pattern": r"\S",
                        },
                        "k": {"type": "integer", "minimum": 1, "maximum": settings.max_k},
                        "categories": {"type": "array", "items": {"type": "string"}},
                    },
                },
            )
        },
        "/v1/events": {
            "post": _operation(
                "events.ingest",
                "Store events idempotently and update their users' profiles",
                {
                    "200": _json(
                        _object(
                            ["accepted", "duplicates", "rejected"],
                            {
                                "accepted": int_,
                                "duplicates": int_,
                                "rejected": {"type": "array", "items": _ref("EntryError")},
                            },
                        ),
                        "Good entries accepted, bad ones reported by index",
                    ),
                    **_errors(BODY_ERRORS),
                },
                body={
                    "type": "object",
                    "required": ["events"],
                    "properties": {
                        "events": {"type": "array", "maxItems": batch, "items": _ref("EventInput")}
                    },
                },
            )
        },
        "/v1/users/{user_id}/recommendations": {
            "parameters": [_id_param("user_id", "user")],
            "get": _operation(
                "users.recommendations",
                "Top k items for the user (cold start for unknown users), with controls",
                {
                    "200": _json(_ref("Recommendations"), "Ranked items"),
                    **_errors(READ_ERRORS),
                },
                parameters=[k, flag, CATEGORY_PARAM, *CONTROL_PARAMS],
            ),
            "post": _operation(
                "users.recommendations_with_body",
                "Top k items for the user, controls and property filters in a JSON body",
                {
                    "200": _json(_ref("Recommendations"), "Ranked items"),
                    **_errors(BODY_ERRORS),
                },
                body=recommend_body(settings),
            ),
        },
        "/v1/recommendations": {
            "post": _operation(
                "recommendations.by_examples",
                "Recommendations for weighted examples (item ids, texts, vectors): no user needed",
                {
                    "200": _json(_ref("Recommendations"), "Ranked items, with `skipped`"),
                    **_errors(BODY_ERRORS),
                },
                body=examples_body(settings),
            )
        },
        "/v1/recommendations/{recomm_id}/next": {
            "parameters": [
                {
                    "name": "recomm_id",
                    "in": "path",
                    "required": True,
                    "description": "From an earlier recommendation answer",
                    "schema": {"type": "string", "minLength": 1, "maxLength": 64},
                }
            ],
            "get": _operation(
                "recommendations.next_page",
                "The next page of an earlier answer: no item repeats; 404 once expired",
                {
                    "200": _json(_ref("Recommendations"), "Ranked items"),
                    **_errors(READ_ERRORS),
                },
                parameters=[
                    {
                        "name": "k",
                        "in": "query",
                        "description": "Page size (default: the first request's k)",
                        "schema": {"type": "integer", "minimum": 1, "maximum": settings.max_k},
                    }
                ],
            ),
        },
        "/v1/stats": {
            "get": _operation(
                "stats.show",
                "Click-through of recommendation answers by model version and experiment arm",
                {
                    "200": _json(
                        _object(
                            ["since", "by_model_version"],
                            {
                                "since": {"type": ["string", "null"]},
                                "by_model_version": {
                                    "type": "array",
                                    "items": _object(
                                        [
                                            "model_version",
                                            "experiment",
                                            "arm",
                                            "answers",
                                            "items_shown",
                                            "events",
                                            "positive_events",
                                            "click_through",
                                        ],
                                        {
                                            "model_version": {"type": ["integer", "null"]},
                                            "experiment": {"type": ["string", "null"]},
                                            "arm": {"type": ["string", "null"]},
                                            "answers": int_,
                                            "items_shown": int_,
                                            "events": {
                                                "type": "object",
                                                "additionalProperties": int_,
                                                "description": "Attributed events by type",
                                            },
                                            "positive_events": int_,
                                            "click_through": {
                                                "type": ["number", "null"],
                                                "description": "positive_events / items_shown",
                                            },
                                        },
                                    ),
                                },
                            },
                        ),
                        "Counts per model version and arm",
                    ),
                    **_errors(READ_ERRORS),
                },
                parameters=[
                    {
                        "name": "since",
                        "in": "query",
                        "description": "Only answers made since (ISO 8601 or epoch seconds)",
                        "schema": {"type": "string"},
                    }
                ],
            )
        },
        "/v1/users/merge": {
            "post": _operation(
                "users.merge",
                "Join an anonymous user's events into a user's profile (idempotent)",
                {
                    "200": _json(
                        _object(
                            ["from", "into", "merged", "moved_events", "event_count"],
                            {
                                "from": {"type": "string"},
                                "into": {"type": "string"},
                                "merged": {
                                    "type": "boolean",
                                    "description": "False when `from` no longer exists",
                                },
                                "moved_events": int_,
                                "event_count": int_,
                            },
                        ),
                        "Merged (or nothing left to merge)",
                    ),
                    **_errors(BODY_ERRORS),
                },
                body={
                    "type": "object",
                    "required": ["from", "into"],
                    "additionalProperties": False,
                    "properties": {
                        "from": {**_id_param("from", "user")["schema"], "pattern": r"\S"},
                        "into": {**_id_param("into", "user")["schema"], "pattern": r"\S"},
                    },
                },
            )
        },
        "/v1/users/{user_id}": {
            "parameters": [_id_param("user_id", "user")],
            "get": _operation(
                "users.show",
                "A user's activity summary",
                {
                    "200": _json(
                        _object(
                            ["user_id", "event_count", "last_event_at", "recent_items"],
                            {
                                "user_id": {"type": "string"},
                                "event_count": int_,
                                "last_event_at": {"type": ["string", "null"]},
                                "recent_items": {
                                    "type": "array",
                                    "items": _object(
                                        ["id", "title", "timestamp", "type"],
                                        {
                                            "id": {"type": "string"},
                                            "title": {"type": "string"},
                                            "timestamp": {"type": "string"},
                                            "type": {"type": "string"},
                                        },
                                    ),
                                },
                            },
                        ),
                        "The user",
                    ),
                    **_errors(READ_ERRORS),
                },
            ),
            "delete": _operation(
                "users.delete",
                "Erase the user, their events and profile",
                {**no_content, **_errors(READ_ERRORS)},
            ),
        },
    }
    status = {"type": "string"}
    paths["/healthz"] = {
        "get": _open(
            "Process alive (no I/O)", _json(_object(["status"], {"status": status}), "Alive")
        )
    }
    paths["/readyz"] = {
        "get": {
            **_open(
                "Database reachable and active index loaded",
                _json(
                    _object(
                        ["status", "index_version", "index_items"],
                        {
                            "status": status,
                            "index_version": {"type": ["integer", "null"]},
                            "index_items": int_,
                        },
                    ),
                    "Ready",
                ),
            ),
        }
    }
    paths["/readyz"]["get"]["responses"]["503"] = _json(
        _object(["status", "error"], {"status": status, "error": {"type": "object"}}), "Not ready"
    )
    paths["/metrics"] = {
        "get": _open(
            "Prometheus metrics",
            {
                "description": "Prometheus text format",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
        )
    }
    paths["/openapi.json"] = {
        "get": _open("This document", _json({"type": "object"}, "OpenAPI 3.1"))
    }
    spec: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "driftrec",
            "version": _version(),
            "description": (
                "Recommendations whose user interest vectors move with every event. Errors are "
                '`{"error": {"code", "message", "details"?}}`; a 5xx is always a bug, except 503 '
                "(retry later)."
            ),
        },
        "paths": paths,
        "components": _components(settings),
        "security": [{"bearer": []}, {"apiKey": []}],
    }
    if server_url:
        spec["servers"] = [{"url": server_url}]
    if not settings.auth_enabled:
        spec["security"] = []
    return spec


def _open(summary: str, ok: dict[str, Any]) -> dict[str, Any]:
    return {"summary": summary, "security": [], "responses": {"200": ok}}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("driftrec")
    except PackageNotFoundError:
        return "0.0.0"


@bp.get("/openapi.json")
def spec() -> dict[str, Any]:
    return build_spec(get_runtime().settings)


@bp.get("/docs")
def page() -> str:
    document = build_spec(get_runtime().settings)
    rows = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            scope = operation.get("x-scope", "none")
            codes = ", ".join(operation["responses"])
            rows.append(
                f"<tr><td><code>{method.upper()}</code></td><td><code>{html.escape(path)}</code>"
                f"</td><td>{html.escape(operation['summary'])}</td><td>{scope}</td>"
                f"<td>{codes}</td></tr>"
            )
    title = html.escape(document["info"]["title"])
    spec_url = url_for("docs.spec")
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title} API</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:4px 10px;"
        "border-bottom:1px solid #ddd;text-align:left}</style></head><body>"
        f"<h1>{title} API {html.escape(document['info']['version'])}</h1>"
        f"<p>{html.escape(document['info']['description'])}</p>"
        "<p>Send <code>Authorization: Bearer &lt;key&gt;</code> (or <code>X-API-Key</code>); "
        f"the full machine-readable description is <a href='{spec_url}'>{spec_url}</a>.</p>"
        "<table><tr><th>Method</th><th>Path</th><th>Summary</th><th>Scope</th>"
        f"<th>Responses</th></tr>{''.join(rows)}</table></body></html>"
    )
