"""Bad input answers a JSON 4xx (never a 5xx); health, readiness, metrics, startup checks."""

from __future__ import annotations

import logging
import time

import pytest
from sqlalchemy.exc import OperationalError

from service.app import create_app
from store.errors import SchemaOutOfDate
from store.settings import Settings

REC = "/v1/users/someone/recommendations"


def _error(response, status: int, code: str) -> str:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.is_json
    body = response.get_json()
    assert set(body) == {"error"} and body["error"]["code"] == code
    assert body["error"]["message"]
    return body["error"]["message"]


def test_unparsable_json_is_400(client):
    for raw in ("{", '{"events": [}', b"\xff\xfe", ""):
        response = client.post("/v1/events", data=raw, content_type="application/json")
        _error(response, 400, "invalid_json")
    _error(
        client.put("/v1/items", data="nope", content_type="application/json"), 400, "invalid_json"
    )


def test_non_json_content_type_is_415(client):
    body = '{"events": []}'
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        response = client.post("/v1/events", data=body, content_type=content_type)
        _error(response, 415, "unsupported_media_type")
    _error(client.post("/v1/search", data="q=x"), 415, "unsupported_media_type")
    # A vendor +json type is JSON.
    ok = client.post("/v1/events", data=body, content_type="application/vnd.api+json")
    assert ok.status_code == 200


def test_body_must_be_an_object(client):
    for raw in ("[]", '"events"', "3", "null"):
        response = client.post("/v1/events", data=raw, content_type="application/json")
        _error(response, 422, "validation_error")


@pytest.mark.parametrize(
    "query", ["k=0", "k=1001", "k=abc", "k=-1", "k=1.5", "k=", "k=99999999999999999999"]
)
def test_bad_k_is_422(client, query):
    message = _error(client.get(f"{REC}?{query}"), 422, "validation_error")
    assert "k" in message
    _error(client.get(f"/v1/items/space-0/similar?{query}"), 422, "validation_error")


def test_query_k_accepts_ascii_digits_only_and_says_why(client, runtime):
    limit = runtime.settings.max_k
    for query, says in [
        ("k=--5", "k must be an integer, got '--5'"),
        ("k=%C2%B2", "k must be an integer"),  # superscript two: str.isdigit() says yes
        ("k=%EF%BC%95", "k must be an integer"),  # full-width five: int() takes it
        ("k=99999999999999", f"k must be at most {limit}, got 99999999999999"),
    ]:
        assert _error(client.get(f"{REC}?{query}"), 422, "validation_error").startswith(says)


def test_k_bounds_are_inclusive(client):
    assert client.get(f"{REC}?k=1").status_code == 200
    assert client.get(f"{REC}?k=1000").status_code == 200


def test_bad_flags_and_search_bodies_are_422(client):
    _error(client.get(f"{REC}?exclude_seen=maybe"), 422, "validation_error")
    for body in (
        {},
        {"query": ""},
        {"query": "   "},
        {"query": 5},
        {"query": "x" * 1001},
        {"query": "ok", "k": 0},
        {"query": "ok", "k": "3"},
        {"query": "ok", "k": True},
        {"query": "ok", "k": 2.0},
        {"query": "ok", "categories": "space"},
    ):
        _error(client.post("/v1/search", json=body), 422, "validation_error")


def test_unknown_ids_and_routes_are_404(client):
    _error(client.get("/v1/items/unknown"), 404, "not_found")
    _error(client.delete("/v1/items/unknown"), 404, "not_found")
    _error(client.get("/v1/items/unknown/similar"), 404, "not_found")
    _error(client.get("/v1/users/unknown"), 404, "not_found")
    _error(client.delete("/v1/users/unknown"), 404, "not_found")
    _error(client.get("/v1/nothing-here"), 404, "not_found")


def test_huge_ids_are_refused(client):
    huge = "x" * 257
    _error(client.get(f"/v1/items/{huge}"), 422, "validation_error")
    _error(client.get(f"/v1/users/{huge}"), 422, "validation_error")
    _error(client.get(f"/v1/users/{huge}/recommendations"), 422, "validation_error")
    _error(client.delete(f"/v1/users/{huge}"), 422, "validation_error")
    _error(client.get("/v1/users/a%00b/recommendations"), 422, "validation_error")
    item = {"id": huge, "title": "t"}
    _error(client.put("/v1/items", json={"items": [item]}), 422, "validation_error")
    event = {"id": huge, "user_id": "u", "item_id": "space-0", "type": "view", "timestamp": 0}
    body = client.post("/v1/events", json={"events": [event]}).get_json()
    assert body["accepted"] == 0 and body["rejected"][0]["index"] == 0


def test_item_and_user_ids_with_a_slash_are_refused(client):
    """URL paths name items and users, and a server decodes %2F into a separator before
    routing: such an item or user could be created but never read, recommended to or erased."""
    item = {"id": "shop/1", "title": "t"}
    refused = client.put("/v1/items", json={"items": [item]})
    _error(refused, 422, "validation_error")
    assert "must not contain '/'" in refused.get_json()["error"]["details"][0]["error"]
    event = {"id": "e/1", "user_id": "org/7", "item_id": "space-0", "type": "view"}
    body = client.post("/v1/events", json={"events": [{**event, "timestamp": 0}]}).get_json()
    assert body["accepted"] == 0 and "must not contain '/'" in body["rejected"][0]["error"]
    # Event ids never appear in a path: a slash is fine there.
    accepted = client.post(
        "/v1/events", json={"events": [{**event, "user_id": "org-7", "timestamp": 0}]}
    )
    assert accepted.get_json()["accepted"] == 1
    merge = {"from": "org-7", "into": "org/8"}
    _error(client.post("/v1/users/merge", json=merge), 422, "validation_error")


def test_bad_event_values_are_rejected_by_index(client):
    now = time.time()
    base = {"user_id": "bad-values", "item_id": "space-0", "type": "rating", "timestamp": now}
    cases = [
        {"value": "NaN"},
        {"value": True},
        {"value": 1e7},
        {"timestamp": now + 86_400 + 120},
        {"timestamp": "2024-13-45T00:00:00Z"},
        {"timestamp": 1e20},
        {"timestamp": float("nan")},
        {"timestamp": True},
        {"timestamp": None},
        {"user_id": ""},
        {"type": 3},
        {"item_id": ["space-0"]},
        {"extra": 1},
    ]
    events = [{**base, "id": f"bad-{n}", **case} for n, case in enumerate(cases)]
    events.append({**base, "id": "good-1", "value": 3.0, "timestamp": now + 3600})
    # Python's JSON writer emits NaN/Infinity tokens; the entry is rejected, not the request.
    events.append({**base, "id": "nan-token", "value": float("nan")})
    events.append({**base, "id": "inf-token", "value": float("-inf")})
    body = client.post("/v1/events", json={"events": events}).get_json()
    assert body["accepted"] == 1
    assert [r["index"] for r in body["rejected"]] == [
        *range(len(cases)),
        len(cases) + 1,
        len(cases) + 2,
    ]


def test_wrong_method_is_405_with_allow(client):
    response = client.post("/v1/items/space-0")
    _error(response, 405, "method_not_allowed")
    assert "GET" in response.headers["Allow"]
    _error(client.get("/v1/events"), 405, "method_not_allowed")


def test_oversized_body_is_413(app, client):
    limit = app.config["MAX_CONTENT_LENGTH"]
    app.config["MAX_CONTENT_LENGTH"] = 1024
    try:
        big = {"events": [], "padding": "x" * 2048}
        _error(client.post("/v1/events", json=big), 413, "payload_too_large")
    finally:
        app.config["MAX_CONTENT_LENGTH"] = limit


def test_healthz_and_readyz(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["status"] == "ok"


def _database_unreachable(runtime, monkeypatch) -> None:
    """Sessions raise SQLAlchemy's OperationalError; the request path's direct reads
    (`store.direct_read`) get the driver's own from their connection checkout, which they
    must raise as SQLAlchemy's (the 503 handler's class), not as a 500."""

    def unreachable():
        raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    def refused():
        raise runtime.db.engine.dialect.loaded_dbapi.OperationalError("connection refused")

    monkeypatch.setattr(runtime.db, "read", unreachable)  # the index reads through it too
    monkeypatch.setattr(runtime.db.engine, "raw_connection", refused)


def test_healthz_needs_no_database_and_readyz_reports_503(client, runtime, monkeypatch):
    _database_unreachable(runtime, monkeypatch)
    assert client.get("/healthz").status_code == 200
    response = client.get("/readyz")
    assert response.status_code == 503 and response.is_json
    assert response.get_json()["status"] == "unavailable"


def test_database_outage_answers_503_json(app, client, runtime, monkeypatch):
    _database_unreachable(runtime, monkeypatch)
    for path in (
        "/v1/users/someone",
        "/v1/users/someone/recommendations",
        "/v1/items/space-1/similar",
    ):
        response = client.get(path)
        _error(response, 503, "unavailable")
        assert response.headers["Retry-After"] == "1"
    app.config["SERVER_ERRORS"].clear()  # expected here: an outage, not a bug


def test_metrics_use_url_rules_and_count_events(client):
    client.get("/v1/items/space-1")
    client.get("/v1/items/space-2")
    client.post(
        "/v1/events",
        json={
            "events": [
                {"id": "m-1", "user_id": "m", "item_id": "space-0", "type": "view", "timestamp": 0}
            ]
        },
    )
    response = client.get("/metrics")
    assert response.status_code == 200 and response.mimetype == "text/plain"
    text = response.get_data(as_text=True)
    assert (
        'driftrec_http_requests_total{endpoint="/v1/items/<item_id>",method="GET",status="200"}'
        in text
    )
    assert "space-1" not in text
    assert "driftrec_http_request_duration_seconds_bucket" in text
    assert 'driftrec_events_ingested_total{outcome="accepted"}' in text
    index_size = next(
        line for line in text.splitlines() if line.startswith("driftrec_index_items ")
    )
    assert float(index_size.split()[1]) >= 30


def test_authorization_header_never_logged(client, caplog):
    caplog.set_level(logging.DEBUG)
    secret = "Bearer s3cr3t-token-value"
    client.get("/v1/items/space-0", headers={"Authorization": secret})
    client.get("/v1/items/boom", headers={"Authorization": secret})
    assert "request method=GET" in caplog.text
    assert "s3cr3t" not in caplog.text


def test_refuses_to_start_on_an_unmigrated_database(tmp_path):
    settings = Settings(database_url=f"sqlite:///{tmp_path}/empty.db", data_dir=tmp_path)
    with pytest.raises(SchemaOutOfDate, match="driftrec db upgrade"):
        create_app({"settings": settings})


def test_every_answer_carries_the_apps_own_time(client):
    """Server-Timing ``app;dur=<ms>`` on answers and errors alike: what a client needs to tell
    the app's time from the wait before it."""
    for response in (
        client.get("/healthz"),
        client.get("/v1/items/no-such-item"),
        client.post("/v1/search", json={}),
    ):
        name, duration = response.headers["Server-Timing"].split(";dur=")
        assert name == "app" and 0 <= float(duration) < 60_000, response.headers
