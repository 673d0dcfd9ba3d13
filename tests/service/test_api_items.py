"""Catalogue endpoints through the real parts: upsert, read, delete, similar, search."""

from __future__ import annotations

import time


def _ids(response) -> list[str]:
    assert response.status_code == 200, response.get_json()
    return [item["id"] for item in response.get_json()["items"]]


def test_upsert_answers_counts_and_item_is_searchable_at_once(client):
    response = client.put(
        "/v1/items",
        json={
            "items": [
                {"id": "new-volcano", "title": "Volcano eruption", "text": "Lava and ash."},
                {"id": "new-lava", "title": "Lava flows from a volcano", "categories": ["geo"]},
            ]
        },
    )
    assert response.status_code == 200
    body = response.get_json()
    assert body["upserted"] == 2 and body["embedded"] == 2
    assert "index_version" in body

    assert _ids(client.get("/v1/items/new-volcano/similar?k=1")) == ["new-lava"]
    found = _ids(client.post("/v1/search", json={"query": "erupting volcano", "k": 2}))
    assert set(found) == {"new-volcano", "new-lava"}


def test_unchanged_upsert_embeds_nothing_and_changed_text_reembeds(client):
    item = {"id": "re-1", "title": "Knitting a scarf", "text": "Wool and needles."}
    assert client.put("/v1/items", json={"items": [item]}).get_json()["embedded"] == 1
    assert client.put("/v1/items", json={"items": [item]}).get_json()["embedded"] == 0
    changed = {**item, "title": "Submarine voyage", "text": "Deep under the ocean."}
    body = client.put("/v1/items", json={"items": [changed]}).get_json()
    assert body == {**body, "upserted": 1, "embedded": 1}
    assert "re-1" in _ids(client.post("/v1/search", json={"query": "submarine", "k": 1}))


def test_get_item_returns_every_field_with_iso_utc_times(client):
    client.put(
        "/v1/items",
        json={
            "items": [
                {
                    "id": "full-1",
                    "title": "Chess openings",
                    "text": "The Sicilian defence.",
                    "categories": ["games", "strategy"],
                    "properties": {"pages": 320, "tags": ["board"]},
                    "available": True,
                    "expires_at": "2999-01-01T00:00:00+02:00",
                }
            ]
        },
    )
    body = client.get("/v1/items/full-1").get_json()
    assert body["id"] == "full-1" and body["title"] == "Chess openings"
    assert body["text"] == "The Sicilian defence."
    assert body["categories"] == ["games", "strategy"]
    assert body["properties"] == {"pages": 320, "tags": ["board"]}
    assert body["available"] is True and body["has_vector"] is True
    assert body["expires_at"] == "2998-12-31T22:00:00Z"
    assert body["created_at"].endswith("Z") and body["updated_at"].endswith("Z")


def test_deleted_item_is_gone_everywhere(client):
    client.put("/v1/items", json={"items": [{"id": "del-1", "title": "Rocket to Jupiter"}]})
    assert "del-1" in _ids(client.get("/v1/items/space-0/similar?k=10"))

    assert client.delete("/v1/items/del-1").status_code == 204
    assert client.get("/v1/items/del-1").status_code == 404
    assert client.delete("/v1/items/del-1").status_code == 404
    assert client.get("/v1/items/del-1/similar").status_code == 404
    assert "del-1" not in _ids(client.get("/v1/items/space-0/similar?k=100"))
    assert "del-1" not in _ids(client.post("/v1/search", json={"query": "Jupiter", "k": 100}))


def test_unavailable_and_expired_items_are_never_served(client):
    past = time.time() - 60
    client.put(
        "/v1/items",
        json={
            "items": [
                {"id": "off-1", "title": "Saturn rings", "available": False},
                {"id": "old-1", "title": "Neptune moons", "expires_at": past},
                {"id": "ok-1", "title": "Uranus and its moons"},
            ]
        },
    )
    everything = _ids(client.post("/v1/search", json={"query": "planets", "k": 1000}))
    assert "ok-1" in everything
    assert not {"off-1", "old-1"} & set(everything)
    assert not {"off-1", "old-1"} & set(_ids(client.get("/v1/items/ok-1/similar?k=1000")))
    # Still readable by id, and an upsert makes the item servable again.
    assert client.get("/v1/items/off-1").get_json()["available"] is False
    client.put("/v1/items", json={"items": [{"id": "off-1", "title": "Saturn rings"}]})
    assert "off-1" in _ids(client.post("/v1/search", json={"query": "Saturn", "k": 3}))


def test_category_filters_on_similar_and_search(client):
    similar = client.get("/v1/items/space-0/similar?k=3&category=food")
    assert similar.status_code == 200
    assert [i["id"].split("-")[0] for i in similar.get_json()["items"]] == ["food"] * 3
    found = client.post(
        "/v1/search", json={"query": "rocket", "k": 4, "categories": ["music", "sports"]}
    ).get_json()["items"]
    assert len(found) == 4 and all(i["id"].split("-")[0] in {"music", "sports"} for i in found)


def test_search_answers_ranked_items_with_scores(client):
    body = client.post("/v1/search", json={"query": "spaghetti with eggs and cheese"}).get_json()
    assert body["items"][0]["id"] == "food-0"
    assert len(body["items"]) == 10
    scores = [item["score"] for item in body["items"]]
    assert scores == sorted(scores, reverse=True)
    assert set(body) >= {"items", "index_version", "model_version"}


def test_a_batch_with_bad_entries_is_refused_whole_and_lists_them(client):
    response = client.put(
        "/v1/items",
        json={
            "items": [
                {"id": "good-1", "title": "Fine"},
                {"id": "", "title": "Empty id"},
                {"id": "x" * 257, "title": "Huge id"},
                {"id": "t", "title": 5},
                {"id": "c", "title": "C", "categories": "space"},
                {"id": "p", "title": "P", "properties": []},
                {"id": "a", "title": "A", "available": "yes"},
                {"id": "e", "title": "E", "expires_at": "next tuesday"},
                "not an object",
                {"id": "u", "title": "U", "colour": "red"},
                {"id": "n", "title": "nul\u0000"},
            ]
        },
    )
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["code"] == "validation_error"
    assert [d["index"] for d in error["details"]] == list(range(1, 11))
    assert client.get("/v1/items/good-1").status_code == 404  # nothing written


def test_batch_limits(client, runtime):
    too_many = [{"id": f"b{n}", "title": "t"} for n in range(runtime.settings.max_batch_size + 1)]
    response = client.put("/v1/items", json={"items": too_many})
    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "payload_too_large"
    assert client.put("/v1/items", json={"items": []}).get_json()["upserted"] == 0
    assert client.put("/v1/items", json={"items": {"id": "x"}}).status_code == 422
    assert client.put("/v1/items", json={"things": []}).status_code == 422


def test_unknown_items_are_404_and_huge_ids_422(client):
    for response in (
        client.get("/v1/items/nope"),
        client.delete("/v1/items/nope"),
        client.get("/v1/items/nope/similar"),
    ):
        assert response.status_code == 404
        assert response.get_json()["error"]["code"] == "not_found"
    assert client.get("/v1/items/" + "x" * 300).status_code == 422
    assert client.get("/v1/items/a%00b").status_code == 422


def test_a_retitled_item_shows_its_new_title_in_every_workers_next_answer(
    client, app, app_builder, embedder, tmp_path
):
    """Workers keep item names for their answers (`interest.recommend.NameCache`); a catalogue
    change in another worker empties them, so no answer carries an old title."""
    from tests.service.conftest import admin_client

    items = [
        {"id": "name-a", "title": "Harbour seals", "text": "Seals resting on a harbour wall."},
        {"id": "name-b", "title": "Grey seals", "text": "Grey seals on a rocky shore."},
    ]
    assert client.put("/v1/items", json={"items": items}).status_code == 200
    other = app_builder(app.extensions["driftrec"].settings.database_url, tmp_path / "w2", embedder)
    try:
        reader = admin_client(other)
        for _ in range(2):  # the second answer is named from the cache
            body = reader.get("/v1/items/name-a/similar?k=1").get_json()
            assert body["items"][0] == {**body["items"][0], "id": "name-b", "title": "Grey seals"}
        retitled = {**items[1], "title": "Atlantic grey seals"}
        assert client.put("/v1/items", json={"items": [retitled]}).status_code == 200
        body = reader.get("/v1/items/name-a/similar?k=1").get_json()
        assert body["items"][0]["title"] == "Atlantic grey seals"
    finally:
        other.extensions["driftrec"].close()
