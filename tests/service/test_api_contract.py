"""The declared contract (`service.contract`): one set of pydantic models validates requests and
writes /openapi.json, with the running app's limits, and errors name the field at fault."""

from __future__ import annotations

import time

from service.contract import operations
from service.schemas import MAX_QUERY_LENGTH
from tests.service.conftest import MAX_BATCH, admin_client


def _refs(node: object) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(_refs(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(value) for value in node))
    return set()


def test_every_endpoint_is_declared_and_every_reference_resolves(app, client):
    declared = {endpoint for _, _, endpoint, _ in operations(app)}
    routed = {rule.endpoint for rule in app.url_map.iter_rules()}
    assert routed - declared == {"static", "ui.page", "docs.page"}  # pages, not API
    document = client.get("/openapi.json").get_json()
    schemas = document["components"]["schemas"]
    for ref in _refs(document):
        section, name = ref.split("/")[-2:]
        assert name in document["components"][section], ref
    assert "x-setting-limit" not in str(document)  # every settings-bound limit is filled in
    # Batch entries are validated one by one, yet documented as their own components.
    events = schemas["EventsBody"]["properties"]["events"]
    assert events["items"] == {"$ref": "#/components/schemas/EventEntry"}
    assert events["maxItems"] == MAX_BATCH
    assert schemas["SearchBody"]["properties"]["query"]["maxLength"] == MAX_QUERY_LENGTH


def test_limits_follow_the_settings_in_document_and_validation(app_builder, embedder, tmp_path):
    app = app_builder(f"sqlite:///{tmp_path / 'k.db'}", tmp_path / "data", embedder, max_k=7)
    client = admin_client(app)
    try:
        document = client.get("/openapi.json").get_json()
        k_body = document["components"]["schemas"]["SearchBody"]["properties"]["k"]
        assert (k_body["minimum"], k_body["maximum"]) == (1, 7)
        get = document["paths"]["/v1/users/{user_id}/recommendations"]["get"]
        k_query = next(p for p in get["parameters"] if p["name"] == "k")
        assert k_query["schema"]["maximum"] == 7 and "null" not in str(k_query["schema"])

        assert client.get("/v1/users/u/recommendations?k=7").status_code == 200
        response = client.get("/v1/users/u/recommendations?k=8")
        assert response.status_code == 422
        assert response.get_json()["error"]["message"] == "k must be at most 7, got 8"
        response = client.post("/v1/search", json={"query": "x", "k": 8})
        assert response.status_code == 422 and "k must be at most 7" in response.get_data(True)
    finally:
        app.extensions["driftrec"].close()


def _message(response) -> str:
    assert response.status_code == 422, response.get_data(as_text=True)
    body = response.get_json()
    assert body["error"]["code"] == "validation_error"
    return body["error"]["message"]


def test_messages_name_the_field_at_fault(client):
    nan_weight = '{"examples": [{"item_id": "a"}, {"item_id": "b", "weight": NaN}]}'
    response = client.post("/v1/recommendations", data=nan_weight, content_type="application/json")
    assert _message(response) == "examples[1].weight must be a finite number"
    one_of = client.post("/v1/recommendations", json={"examples": [{"item_id": "a", "text": "b"}]})
    assert _message(one_of) == "examples[0] needs exactly one of item_id, text, vector"
    assert (
        _message(client.post("/v1/search", json={"query": "x", "k": "3"}))
        == "k must be an integer, got a string"
    )
    assert _message(client.post("/v1/search", json={"k": 3})) == "missing field 'query'"
    assert _message(client.post("/v1/recommendations", json={"examples": []})) == (
        "examples must not be empty"
    )
    assert (
        _message(client.post("/v1/users/u/recommendations", json={"filter": {"colour": 1}}))
        == "unknown filter field 'colour'"
    )
    assert (
        _message(client.post("/v1/users/merge", json={"from": " ", "into": "b"}))
        == "from must not be empty"
    )
    assert (
        _message(client.post("/v1/search", json=[1]))
        == "request body must be an object, got a list"
    )
    assert (
        _message(client.get("/v1/users/u/recommendations?categories_mode=some"))
        == "categories_mode must be one of 'any' or 'all', got 'some'"
    )
    assert _message(client.get("/v1/items/" + "x" * 300)) == "item id is longer than 256 characters"


def test_entry_errors_name_the_field_and_list_every_problem(client):
    event = {"id": "e", "user_id": "u\x00", "item_id": "space-0", "type": "view", "value": "5"}
    body = client.post("/v1/events", json={"events": [event]}).get_json()
    assert body["accepted"] == 0
    assert body["rejected"][0]["error"] == (
        "user_id must not contain NUL characters; value must be a number, got a string; "
        "missing field 'timestamp'"
    )
    ahead = {**event, "user_id": "u", "value": None, "timestamp": time.time() + 3 * 86_400}
    body = client.post("/v1/events", json={"events": [ahead]}).get_json()
    assert body["rejected"][0]["error"] == "timestamp is more than one day in the future"
