"""Request limits and hostile input: invalid Unicode, oversized bodies and batches, far-future
timestamps. Each is a JSON 4xx naming the problem, never a 5xx."""

from __future__ import annotations

import json
import time

import pytest

from service.schemas import MAX_QUERY_LENGTH
from store.models import EXTERNAL_ID_LENGTH

LONE_SURROGATE = '"\\ud800x"'  # valid JSON syntax, not encodable text


def _raw(client, method: str, path: str, text: str):
    return client.open(path, method=method, data=text, content_type="application/json")


def _error(response, status: int, code: str) -> str:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert body["error"]["code"] == code
    return body["error"]["message"]


def test_lone_surrogates_are_refused_per_field(client):
    now = time.time()
    event = (
        '{"events": [{"id": "sur-1", "user_id": ' + LONE_SURROGATE + ', "item_id": "space-0", '
        f'"type": "view", "timestamp": {now}}}]}}'
    )
    body = _raw(client, "POST", "/v1/events", event).get_json()
    assert body["accepted"] == 0 and "Unicode" in body["rejected"][0]["error"]

    item = '{"items": [{"id": "sur-item", "title": ' + LONE_SURROGATE + "}]}"
    message = _error(_raw(client, "PUT", "/v1/items", item), 422, "validation_error")
    assert "invalid" in message
    search = '{"query": ' + LONE_SURROGATE + "}"
    assert "Unicode" in _error(_raw(client, "POST", "/v1/search", search), 422, "validation_error")
    categories = '{"query": "space", "categories": [' + LONE_SURROGATE + "]}"
    _error(_raw(client, "POST", "/v1/search", categories), 422, "validation_error")


def test_invalid_utf8_in_body_and_path(client):
    bad = b'{"query": "caf\xe9"}'  # Latin-1 bytes declared as JSON
    _error(
        client.post("/v1/search", data=bad, content_type="application/json"), 400, "invalid_json"
    )
    for path in ("/v1/users/%ff%fe/recommendations", "/v1/items/%c3%28", "/v1/users/%ed%a0%80"):
        response = client.get(path)
        assert 400 <= response.status_code < 500, (path, response.status_code)
        assert response.is_json


def test_limits_are_inclusive_and_named(client, runtime):
    at_limit = "q" * MAX_QUERY_LENGTH
    assert client.post("/v1/search", json={"query": at_limit, "k": 1}).status_code == 200
    message = _error(
        client.post("/v1/search", json={"query": at_limit + "q"}), 422, "validation_error"
    )
    assert str(MAX_QUERY_LENGTH) in message
    assert client.get(f"/v1/users/{'u' * EXTERNAL_ID_LENGTH}/recommendations").status_code == 200
    limit = runtime.settings.max_batch_size
    events = [{"id": f"lim-{n}"} for n in range(limit + 1)]
    message = _error(client.post("/v1/events", json={"events": events}), 413, "payload_too_large")
    assert str(limit) in message and "DRIFTREC_MAX_BATCH_SIZE" in message


@pytest.mark.parametrize(
    "timestamp", ["9999-12-31T23:59:59Z", 253402300799, "2999-01-01", 1e15, "+10000-01-01"]
)
def test_far_future_timestamps_are_rejected(client, timestamp):
    event = {
        "id": f"future-{timestamp}",
        "user_id": "future",
        "item_id": "space-0",
        "type": "view",
        "timestamp": timestamp,
    }
    body = client.post("/v1/events", json={"events": [event]}).get_json()
    assert body["accepted"] == 0 and body["rejected"][0]["index"] == 0


def test_nan_and_infinity_anywhere_are_refused(client):
    item = {"id": "nan-item", "title": "t", "properties": {"score": float("nan")}}
    _error(
        client.put(
            "/v1/items", data=json.dumps({"items": [item]}), content_type="application/json"
        ),
        422,
        "validation_error",
    )
    _error(
        client.post("/v1/search", data='{"query": "x", "k": NaN}', content_type="application/json"),
        422,
        "validation_error",
    )
    _error(client.get("/v1/users/x/recommendations?k=inf"), 422, "validation_error")
    _error(client.get("/v1/users/x/recommendations?k=nan"), 422, "validation_error")


def test_oversized_body_with_default_limit_is_413_json(app, client):
    too_big = b'{"events": ["' + b"x" * app.config["MAX_CONTENT_LENGTH"] + b'"]}'
    _error(
        client.post("/v1/events", data=too_big, content_type="application/json"),
        413,
        "payload_too_large",
    )


#: An integer JSON allows but a float cannot hold (float() raises OverflowError).
HUGE = 10**400


def test_integers_beyond_the_float_range_are_422_naming_the_field(client):
    event = {"id": "huge-ts", "user_id": "huge", "item_id": "space-0", "type": "view"}
    events = [{**event, "timestamp": HUGE}, {**event, "id": "huge-value", "value": HUGE}]
    rejected = client.post("/v1/events", json={"events": events}).get_json()["rejected"]
    assert "timestamp is out of range: about 1e400" in rejected[0]["error"]
    assert "value is out of range" in rejected[1]["error"]  # not "must be a number, got a number"
    for field, value in (("expires_at", HUGE), ("properties", {"p": [1, {"q": -HUGE}]})):
        item = {"id": "huge-item", "title": "t", field: value}
        response = client.put("/v1/items", json={"items": [item]})
        _error(response, 422, "validation_error")
        detail = response.get_json()["error"]["details"][0]["error"]
        assert detail.startswith(field) and "range" in detail, detail
    message = _error(
        client.post("/v1/search", json={"query": "x", "k": HUGE}), 422, "validation_error"
    )
    assert "k must be at most" in message and len(message) < 200


def test_invalid_utf8_in_the_query_string_is_refused(client):
    for query in ("category=%FF", "exclude=%FF", "k=5&exclude=a%C3%28"):
        message = _error(
            client.get(f"/v1/users/q/recommendations?{query}"), 422, "validation_error"
        )
        assert "query string in the URL is not valid UTF-8" in message
    _error(client.get("/v1/items/space-0/similar?category=%ED%A0%80"), 422, "validation_error")
    ok = client.get("/v1/users/q/recommendations?category=caf%C3%A9&exclude=%E2%82%AC")
    assert ok.status_code == 200
