"""API key enforcement: every endpoint needs a key with its scope, except health, the docs and
the /ui page (its script sends the key the user pastes in).

Clients send ``Authorization: Bearer <key>`` (or ``X-API-Key: <key>``). No key or an unknown,
malformed or revoked one answers 401; a key without the endpoint's scope answers 403. Endpoints
not listed in `ENDPOINT_SCOPES` need ``admin``, so a new endpoint is closed until classified.
Neither the key nor the header is ever logged: failures log only the reason.

A key that authenticated is remembered per process for ``DRIFTREC_AUTH_CACHE_S`` seconds
(`KeyCache`, by the token's sha256, never the token), so most requests skip the database
lookup; a revoked key is refused within that time.
"""

from __future__ import annotations

import logging
import threading
import time

from flask import Flask, current_app, g, request

from service.api.common import get_runtime
from service.errors import ApiError
from store.keys import KeyInfo, authenticate, hash_token

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


class KeyCache:
    """Keys that authenticated, by token hash, for ``ttl_s`` seconds (at most ``max_keys``).

    Only successes are kept: a new key works at once, and a wrong one is looked up every time.
    """

    def __init__(self, ttl_s: float, max_keys: int = 1024) -> None:
        self.ttl_s = ttl_s
        self.max_keys = max_keys
        self._keys: dict[str, tuple[float, KeyInfo]] = {}
        self._lock = threading.Lock()

    def get(self, digest: str) -> KeyInfo | None:
        found = self._keys.get(digest)
        if found is None or found[0] <= time.monotonic():
            return None
        return found[1]

    def put(self, digest: str, key: KeyInfo) -> None:
        if self.ttl_s <= 0:
            return
        with self._lock:
            if len(self._keys) >= self.max_keys:
                now = time.monotonic()
                self._keys = {d: entry for d, entry in self._keys.items() if entry[0] > now}
                if len(self._keys) >= self.max_keys:
                    self._keys.clear()
            self._keys[digest] = (time.monotonic() + self.ttl_s, key)


KEY_CACHE = "driftrec.key_cache"


def lookup(token: str) -> KeyInfo | None:
    """The live key ``token`` belongs to: from the cache, else from the database."""
    cache: KeyCache = current_app.extensions[KEY_CACHE]
    digest = hash_token(token)
    key = cache.get(digest)
    if key is None:
        with get_runtime().db.read() as session:
            key = authenticate(session, token)
        if key is not None:
            cache.put(digest, key)
    return key


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
        key = lookup(token)
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


def init_auth(app: Flask, enabled: bool, cache_s: float = 0.0) -> None:
    """Install the check (first among the before-request hooks), or warn that it is off."""
    app.extensions[KEY_CACHE] = KeyCache(cache_s)
    if enabled:
        app.before_request_funcs.setdefault(None, []).insert(0, check_request)
    else:
        log.warning("auth disabled (DRIFTREC_AUTH=disabled): every endpoint is open to anyone")
