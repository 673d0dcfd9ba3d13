"""Per-request controls on recommendations through the real service (model, FAISS, SQLite):
exclude, category and property filters that never starve, min_score, diversity, fields,
explanations, and negative feedback."""

from __future__ import annotations

import time
import uuid

import pytest

from tests.service.conftest import new_user_id

#: Items with properties, written once per module beside the themed catalogue.
PROPERTY_ITEMS = [
    {
        "id": "shop-red-shirt",
        "title": "Red cotton shirt",
        "categories": ["clothes", "summer"],
        "properties": {"color": "red", "size": "M", "price": 9.5, "released": "2021-03-01"},
    },
    {
        "id": "shop-red-coat",
        "title": "Red winter coat",
        "categories": ["clothes", "winter"],
        "properties": {"color": "red", "size": "L", "price": 120, "released": "2019-10-01"},
    },
    {
        "id": "shop-blue-shirt",
        "title": "Blue linen shirt",
        "categories": ["clothes", "summer"],
        "properties": {"color": "blue", "size": "S", "price": 5, "released": "2022-06-15"},
    },
    {
        "id": "shop-red-scarf",
        "title": "Red wool scarf",
        "categories": ["clothes", "winter"],
        "properties": {
            "color": ["red", "white"],
            "size": "S",
            "price": 3,
            "released": "2020-01-01",
        },
    },
]


@pytest.fixture(scope="module", autouse=True)
def _shop(app):
    from tests.service.conftest import admin_client

    response = admin_client(app).put("/v1/items", json={"items": PROPERTY_ITEMS})
    assert response.status_code == 200, response.get_json()


def _events(client, user: str, items: list[str], kind: str = "like") -> None:
    now = time.time()
    events = [
        {"id": uuid.uuid4().hex, "user_id": user, "item_id": item, "type": kind, "timestamp": now}
        for item in items
    ]
    response = client.post("/v1/events", json={"events": events})
    assert response.status_code == 200 and response.get_json()["accepted"] == len(items)


def _get(client, user: str, query: str) -> dict:
    response = client.get(f"/v1/users/{user}/recommendations?{query}")
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def _post(client, user: str, body: dict) -> dict:
    response = client.post(f"/v1/users/{user}/recommendations", json=body)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def _ids(body: dict) -> list[str]:
    return [item["id"] for item in body["items"]]


def _theme(item_id: str) -> str:
    return item_id.split("-")[0]


@pytest.fixture
def space_fan(client) -> str:
    user = new_user_id()
    _events(client, user, ["space-0", "space-1", "space-2", "space-4"])
    return user


def test_exclude_as_query_and_body_and_thousands_of_ids(client, space_fan):
    top = _ids(_get(client, space_fan, "k=4"))
    assert len(top) == 4
    got = _ids(_get(client, space_fan, f"k=4&exclude={top[0]},{top[1]}&exclude={top[2]}"))
    assert len(got) == 4 and not set(got) & set(top[:3])

    many = [f"no-such-item-{n}" for n in range(5_000)] + top
    started = time.perf_counter()
    body = _post(client, space_fan, {"k": 4, "exclude": many})
    elapsed = time.perf_counter() - started
    assert len(body["items"]) == 4 and not set(_ids(body)) & set(top)
    print(f"exclude of {len(many)} ids answered in {elapsed * 1000:.0f} ms")


def test_categories_any_and_all(client, space_fan):
    anyone = _ids(_get(client, space_fan, "k=50&categories=summer,winter"))
    assert set(anyone) == {i["id"] for i in PROPERTY_ITEMS}
    both = _post(
        client,
        space_fan,
        {"k": 10, "filter": {"categories": ["clothes", "winter"], "categories_mode": "all"}},
    )
    assert set(_ids(both)) == {"shop-red-coat", "shop-red-scarf"}
    query = _ids(_get(client, space_fan, "k=10&category=clothes,summer&categories_mode=all"))
    assert set(query) == {"shop-red-shirt", "shop-blue-shirt"}


def test_property_filters_never_starve(client, space_fan):
    """The user's profile is all space, the only matches rank far down: all are still found."""

    def matching(properties: dict, k: int = 10) -> set[str]:
        body = _post(client, space_fan, {"k": k, "filter": {"properties": properties}})
        return set(_ids(body))

    assert matching({"color": "red"}) == {"shop-red-shirt", "shop-red-coat", "shop-red-scarf"}
    assert matching({"color": "red"}, k=2) < {"shop-red-shirt", "shop-red-coat", "shop-red-scarf"}
    assert matching({"size": {"in": ["S", "M"]}, "price": {"gte": 1, "lt": 10}}) == {
        "shop-red-shirt",
        "shop-blue-shirt",
        "shop-red-scarf",
    }
    assert matching({"released": {"gte": "2020-01-01", "lt": "2022-01-01"}}) == {
        "shop-red-shirt",
        "shop-red-scarf",
    }
    assert matching({"color": {"ne": "red"}, "price": {"lte": 5}}) == {"shop-blue-shirt"}
    assert matching({"color": "green"}) == set()
    assert matching({"no_such_property": 1}) == set()


def test_min_score_and_fields(client, space_fan):
    everything = _get(client, space_fan, "k=100")["items"]
    floor = everything[5]["score"]
    kept = _get(client, space_fan, f"k=100&min_score={floor}")["items"]
    assert [i["id"] for i in kept] == [i["id"] for i in everything[:6]]
    assert _get(client, space_fan, "k=10&min_score=1.5")["items"] == []

    body = _post(
        client,
        space_fan,
        {"k": 2, "categories": ["clothes"], "fields": ["color", "price", "categories", "nope"]},
    )
    for item in body["items"]:
        assert set(item["properties"]) == {"color", "price"}
        assert "clothes" in item["categories"]
    plain = _get(client, space_fan, "k=2")["items"][0]
    assert set(plain) == {"id", "title", "score"}


def test_diversity_spreads_themes(client, space_fan):
    def themes(diversity: float) -> set[str]:
        return {_theme(i) for i in _ids(_get(client, space_fan, f"k=6&diversity={diversity}"))}

    plain, diverse = themes(0), themes(0.8)
    assert len(diverse) >= 3 and len(diverse) > len(plain), (plain, diverse)
    relevant = _get(client, space_fan, "k=6&diversity=0.3")["items"]
    assert relevant[0]["id"] == _get(client, space_fan, "k=6")["items"][0]["id"]


def test_explain_names_the_users_items_and_the_path(client):
    user = new_user_id()
    _events(client, user, ["space-0", "space-1", "food-0"])
    body = _get(client, user, "k=5&explain=true")
    assert body["served_by"] == "decayed_blend" and body["model_version"] is None
    for item in body["items"]:
        explanation = item["explanation"]
        assert explanation["served_by"] == "decayed_blend"
        assert explanation["because"], item
        first = explanation["because"][0]
        assert first["id"] in {"space-0", "space-1", "food-0"}
        assert first["contribution"] == pytest.approx(
            first["weight"] * first["similarity"], rel=1e-3
        )
        if _theme(item["id"]) == "space":
            assert _theme(first["id"]) == "space"
        contributions = [c["contribution"] for c in explanation["because"]]
        assert contributions == sorted(contributions, reverse=True)

    cold = _get(client, f"nobody-{new_user_id()}", "k=3&explain=true")
    assert cold["strategy"] == "cold_start" and cold["served_by"] == "cold_start"
    assert all(
        i["explanation"] == {"served_by": "cold_start", "because": []} for i in cold["items"]
    )


def test_explanations_never_name_a_deleted_item(client):
    user = new_user_id()
    gone = {"id": f"space-gone-{user}", "title": "Comets", "text": "Icy bodies orbit the sun."}
    assert client.put("/v1/items", json={"items": [gone]}).status_code == 200
    _events(client, user, [gone["id"], "space-1"])

    def named(body: dict) -> set[str]:
        return {c["id"] for item in body["items"] for c in item["explanation"]["because"]}

    assert gone["id"] in named(_get(client, user, "k=5&explain=true"))
    assert client.delete(f"/v1/items/{gone['id']}").status_code == 204
    after = _get(client, user, "k=5&explain=true")
    assert after["items"] and gone["id"] not in named(after)
    assert "space-1" in named(after)


def test_negative_feedback_pushes_away_and_excludes(client):
    user = new_user_id()
    _events(client, user, ["space-0", "food-0"])
    before = {i["id"]: i["score"] for i in _get(client, user, "k=100")["items"]}
    _events(client, user, ["food-1"], kind="hide")
    _events(client, user, ["food-2"], kind="dislike")
    _events(client, user, ["food-3"], kind="skip")
    after = {i["id"]: i["score"] for i in _get(client, user, "k=100")["items"]}
    assert after["food-4"] < before["food-4"]
    assert after["space-2"] - after["food-4"] > before["space-2"] - before["food-4"]
    assert not {"food-1", "food-2", "food-3"} & set(after)
    # Liked items come back with exclude_seen=false; hidden and disliked ones never do.
    with_seen = set(_ids(_get(client, user, "k=100&exclude_seen=false")))
    assert {"space-0", "food-0", "food-3"} <= with_seen
    assert not {"food-1", "food-2"} & with_seen
    body = _post(client, user, {"k": 100, "exclude_seen": False, "explain": True})
    assert not {"food-1", "food-2"} & set(_ids(body))


def test_a_stored_integer_beyond_the_float_range_matches_no_range_filter(
    client, runtime, space_fan
):
    """Upserts refuse such an integer now; one stored before must not turn filters into 500s."""
    from store.items import get_item

    def set_huge(value):
        with runtime.db.write() as session:
            item = get_item(session, "shop-red-coat")
            item.properties = {**item.properties, "huge": value}

    set_huge(10**400)
    try:
        huge = {"k": 10, "filter": {"properties": {"huge": {"gte": 1}}}}
        assert _post(client, space_fan, huge)["items"] == []
        anonymous = client.post("/v1/recommendations", json={**huge, "examples": [{"text": "x"}]})
        assert anonymous.status_code == 200 and anonymous.get_json()["items"] == []
        price = {"k": 10, "filter": {"properties": {"price": {"gt": 100}}}}
        assert _ids(_post(client, space_fan, price)) == ["shop-red-coat"]
    finally:
        set_huge(1)


@pytest.mark.parametrize(
    ("method", "query_or_body", "message"),
    [
        ("get", "categories_mode=some", "categories_mode"),
        ("get", "diversity=2", "diversity"),
        ("get", "min_score=abc", "min_score"),
        ("get", "explain=maybe", "explain"),
        ("post", {"filter": {"properties": {"price": {"between": [1, 2]}}}}, "unknown operator"),
        ("post", {"filter": {"properties": {"size": {"in": "S"}}}}, "'in'"),
        ("post", {"filter": {"properties": {"price": {"gte": [1]}}}}, "number or a date"),
        ("post", {"filter": {"properties": {"price": {"lt": 10**400}}}}, "range of a float"),
        ("post", {"filter": {"colour": "red"}}, "unknown filter field"),
        ("post", {"excluded": ["a"]}, "unknown field"),
        ("post", {"exclude": "a,b"}, "exclude"),
        ("post", {"diversity": -0.1}, "diversity"),
        ("post", {"min_score": float("nan")}, "min_score"),
    ],
)
def test_bad_controls_are_422(client, method, query_or_body, message):
    if method == "get":
        response = client.get(f"/v1/users/someone/recommendations?{query_or_body}")
    else:
        response = client.post("/v1/users/someone/recommendations", json=query_or_body)
    assert response.status_code == 422, response.get_json()
    assert message in response.get_json()["error"]["message"]


def test_explain_with_a_trained_model(app_builder, embedder, tmp_path):
    """With a model active, answers say correction_network and explain by the model's recency."""
    from tests.service.conftest import admin_client, train_on_theme_fans

    app = app_builder(f"sqlite:///{tmp_path / 'model.db'}", tmp_path / "data", embedder)
    runtime = app.extensions["driftrec"]
    try:
        client = admin_client(app)
        version, events = train_on_theme_fans(client, runtime)
        body = _get(client, "space-fan-0", "k=4&explain=true")
        assert body["model_version"] == version and body["served_by"] == "correction_network"
        assert body["strategy"] == "personalized"
        for item in body["items"]:
            assert item["explanation"]["served_by"] == "correction_network"
        assert any(item["explanation"]["because"] for item in body["items"])
        fan_items = {e["item_id"] for e in events if e["user_id"] == "space-fan-0"}
        reasons = {c["id"] for item in body["items"] for c in item["explanation"]["because"]}
        assert reasons <= fan_items
    finally:
        runtime.close()
