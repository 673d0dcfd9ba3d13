"""API key enforcement: every endpoint needs a key with its scope, except health, the docs and
the /ui page (its script sends the key the user pastes in).

Clients send ``Authorization: Bearer <key>`` (or ``X-API-Key: <key>``). No key or an unknown,
malformed or revoked one answers 401; a key without the endpoint's scope answers 403. Endpoints
not listed in `ENDPOINT_SCOPES` need ``admin``, so a new endpoint is closed until classified.
Neither the key nor the header is ever logged: failures log only the reason.
"""

from __future__ import annotations

import logging

from flask import Flask, g, request

from service.api.common import get_runtime
from service.errors import ApiError
from store.keys import KeyInfo, authenticate

log = logging.getLogger(__name__)

#: Endpoints anyone may call: liveness, readiness, metrics, the API description, the web page
#: (whose script then calls the API with a key).
OPEN_ENDPOINTS = frozenset(
    {
        "health.healthz",
        "health.readyz",
        "health.metrics",
        "static",
        "docs.spec",
        "docs.page",
        "ui.page",
    }
)
ENDPOINT_SCOPES = {
    "items.show": "read",
    "items.similar": "read",
    "search.search": "read",
    "users.recommendations": "read",
    "users.recommendations_with_body": "read",
    "recommendations.by_examples": "read",
    "recommendations.next_page": "read",
    "stats.show": "read",
    "users.show": "read",
    "events.ingest": "write",
    "users.merge": "write",
    "items.upsert": "admin",
    "items.delete": "admin",
    "users.delete": "admin",
}
DEFAULT_SCOPE = "admin"


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"
    headers = {"WWW-Authenticate": 'Bearer realm="driftrec"'}


class Forbidden(ApiError):
    status, code = 403, "forbidden"


def required_scope(endpoint: str | None) -> str | None:
    """The scope ``endpoint`` needs; None when it is open (or unrouted: 404/405 follow)."""
    if endpoint is None or endpoint in OPEN_ENDPOINTS:
        return None
    return ENDPOINT_SCOPES.get(endpoint, DEFAULT_SCOPE)


def presented_token() -> str | None:
    header = request.headers.get("Authorization")
    if header:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return ""  # present but not a bearer token: invalid, not missing
    key = request.headers.get("X-API-Key")
    return key.strip() if key is not None else None


def check_request() -> None:
    """The before-request hook: raise 401/403, or record the key in ``g.api_key``."""
    scope = required_scope(request.endpoint)
    if scope is None:
        return
    token = presented_token()
    if token is None:
        log.info("auth refused reason=missing endpoint=%s", request.endpoint)
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    key: KeyInfo | None = None
    if token:
        with get_runtime().db.read() as session:
            key = authenticate(session, token)
    if key is None:
        log.info("auth refused reason=invalid endpoint=%s", request.endpoint)
        raise Unauthorized("invalid or revoked API key")
    if not key.allows(scope):
        log.info(
            "auth refused reason=scope key_id=%d endpoint=%s needs=%s",
            key.id,
            request.endpoint,
            scope,
        )
        raise Forbidden(f"this API key lacks the {scope!r} scope this endpoint needs")
    g.api_key = key


def init_auth(app: Flask, enabled: bool) -> None:
    """Install the check (first among the before-request hooks), or warn that it is off."""
    if enabled:
        app.before_request_funcs.setdefault(None, []).insert(0, check_request)
    else:
        log.warning("auth disabled (DRIFTREC_AUTH=disabled): every endpoint is open to anyone")
