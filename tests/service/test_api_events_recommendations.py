"""Events and recommendations through the real parts, on SQLite and on PostgreSQL."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from store.events import get_profile, pending_counts, user_ids
from tests.service.conftest import BACKENDS, both_backends, new_user_id

api_database_url = pytest.fixture(scope="module", params=BACKENDS)(both_backends)


def _event(user: str, item: str, kind: str = "view", *, at: float | None = None, **extra):
    return {
        "id": extra.pop("id", uuid.uuid4().hex),
        "user_id": user,
        "item_id": item,
        "type": kind,
        "timestamp": time.time() if at is None else at,
        **extra,
    }


def _post(client, events):
    response = client.post("/v1/events", json={"events": events})
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def _recommend(client, user: str, query: str = "k=10"):
    response = client.get(f"/v1/users/{user}/recommendations?{query}")
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def _theme(item_id: str) -> str:
    return item_id.split("-")[0]


def _profile_bytes(runtime, user: str):
    with runtime.db.read() as session:
        row = get_profile(session, user_ids(session, [user])[user])
        return (
            row.accumulators,
            row.weight_sums,
            row.ref_time,
            row.recent,
            row.event_count,
            row.version,
        )


def test_events_are_accepted_deduplicated_and_rejected_by_index(client):
    user, now = new_user_id(), time.time()
    body = _post(
        client,
        [
            _event(user, "space-0", id=f"{user}-a"),
            _event(user, "space-1", id=f"{user}-a"),  # same id in one batch
            _event(user, "no-such-item"),
            _event(user, "space-2", "teleport"),
            _event(user, "space-3", "rating", value=float("nan")),
            _event(user, "space-3", "rating", value=float("inf")),
            _event(user, "space-3", at=now + 2 * 86_400),
            _event(user, "space-3", at="yesterday-ish"),
            {"id": "x", "user_id": user, "item_id": "space-0", "type": "view"},
            _event(user, "space-4", "rating", value=4.5, at="2024-05-01T12:00:00Z"),
            _event("u" * 257, "space-0"),
            _event(user, "space-5", "rating", value="5"),
            [1, 2, 3],
        ],
    )
    assert body["accepted"] == 2 and body["duplicates"] == 1
    assert [r["index"] for r in body["rejected"]] == [2, 3, 4, 5, 6, 7, 8, 10, 11, 12]
    reasons = {r["index"]: r["error"] for r in body["rejected"]}
    assert "unknown item" in reasons[2] and "unknown event type" in reasons[3]
    assert "finite" in reasons[4] and "future" in reasons[6] and "timestamp" in reasons[8]
    summary = client.get(f"/v1/users/{user}").get_json()
    assert summary["event_count"] == 2


def test_a_retried_batch_changes_nothing(client, runtime):
    user = new_user_id()
    events = [_event(user, f"food-{n}", "click", at=time.time() - 60 * n) for n in range(4)]
    assert _post(client, events)["accepted"] == 4
    before = _profile_bytes(runtime, user)
    first = _recommend(client, user)

    again = _post(client, events)
    assert again == {"accepted": 0, "duplicates": 4, "rejected": []}
    assert _profile_bytes(runtime, user) == before
    again_body, first_body = _recommend(client, user), dict(first)
    assert again_body.pop("recomm_id") != first_body.pop("recomm_id")  # a new answer
    assert again_body == first_body
    assert client.get(f"/v1/users/{user}").get_json()["event_count"] == 4


def test_a_new_event_moves_the_next_recommendation(client):
    user, now = new_user_id(), time.time()
    _post(client, [_event(user, f"space-{n}", at=now - 3 * 3600 + n) for n in range(3)])
    query = "k=3&exclude_seen=false"
    first = _recommend(client, user, query)
    assert first["strategy"] == "personalized"
    assert [_theme(i["id"]) for i in first["items"]] == ["space"] * 3, first

    _post(client, [_event(user, f"food-{n}", "purchase", at=now - n) for n in range(3)])
    second = _recommend(client, user, query)
    assert [_theme(i["id"]) for i in second["items"]] == ["food"] * 3, second


def test_pending_events_rank_as_if_folded_into_the_profile(client, runtime):
    """Events that wait outside the stored profile (DRIFTREC_PROFILE_PENDING_MAX, 8 in these
    tests) count in the next answer exactly as folded ones: the same items and scores as
    after a rebuild from the log has folded them in."""
    user, now = new_user_id(), time.time()
    _post(client, [_event(user, "space-0", at=now - 3600)])
    for n in range(4):
        _post(client, [_event(user, f"food-{n}", "purchase", at=now - 60 * n)])
    with runtime.db.read() as session:
        user_id = user_ids(session, [user])[user]
        assert pending_counts(session, [user_id]) == {user_id: 4}
        assert get_profile(session, user_id).event_count == 1
    query = "k=5&exclude_seen=false"
    lagging = _recommend(client, user, query)
    assert [_theme(i["id"]) for i in lagging["items"][:3]] == ["food"] * 3, lagging

    runtime.rebuild_profiles(user_ids={user_id})
    with runtime.db.read() as session:
        assert pending_counts(session, [user_id]) == {}
        assert get_profile(session, user_id).event_count == 5
    folded = _recommend(client, user, query)
    assert [i["id"] for i in folded["items"]] == [i["id"] for i in lagging["items"]]
    for a, b in zip(folded["items"], lagging["items"], strict=True):
        assert a["score"] == pytest.approx(b["score"], abs=1e-6)

    # A user with pending events is deleted whole.
    _post(client, [_event(user, "food-4")])
    assert client.delete(f"/v1/users/{user}").status_code == 204
    with runtime.db.read() as session:
        assert pending_counts(session, [user_id]) == {}


def test_seen_deleted_unavailable_and_expired_items_never_appear(client):
    user, tag = new_user_id(), uuid.uuid4().hex[:6]
    expiry = time.time() + 1.5
    extra = [
        {"id": f"deleted-{tag}", "title": "Rocket engines firing on the launch pad"},
        {"id": f"off-{tag}", "title": "Spacecraft docking in orbit", "available": False},
        {"id": f"expiring-{tag}", "title": "Astronaut spacewalk", "expires_at": expiry},
        {"id": f"expired-{tag}", "title": "Comet passing Earth", "expires_at": "2001-01-01"},
    ]
    assert client.put("/v1/items", json={"items": extra}).status_code == 200
    _post(client, [_event(user, f"space-{n}", "like") for n in range(2)])
    everything = {i["id"] for i in _recommend(client, user, "k=1000")["items"]}
    assert f"deleted-{tag}" in everything and f"expiring-{tag}" in everything

    assert client.delete(f"/v1/items/deleted-{tag}").status_code == 204
    time.sleep(max(0.0, expiry - time.time() + 0.1))
    never = {f"deleted-{tag}", f"off-{tag}", f"expiring-{tag}", f"expired-{tag}"}
    never |= {"space-0", "space-1"}  # seen
    got = {i["id"] for i in _recommend(client, user, "k=1000")["items"]}
    assert got and not got & never
    # The user's own items come back when asked to include seen items.
    with_seen = {i["id"] for i in _recommend(client, user, "k=1000&exclude_seen=false")["items"]}
    assert {"space-0", "space-1"} <= with_seen
    assert not with_seen & (never - {"space-0", "space-1"})


def test_unknown_user_gets_cold_start(client):
    body = _recommend(client, "never-seen-" + new_user_id(), "k=5")
    assert body["strategy"] == "cold_start"
    assert body["user_id"].startswith("never-seen-")
    assert len(body["items"]) <= 5
    assert set(body) == {
        "user_id",
        "items",
        "strategy",
        "served_by",
        "recomm_id",
        "index_version",
        "model_version",
        "experiment",
        "arm",
    }
    assert body["served_by"] == "cold_start"
    assert body["experiment"] is None and body["arm"] is None  # no experiment running
    assert all(set(item) == {"id", "title", "score"} for item in body["items"])


def test_events_that_carry_no_interest_leave_the_user_on_cold_start(client):
    user = new_user_id()
    event = {"id": uuid.uuid4().hex, "user_id": user, "item_id": "space-0", "type": "rating"}
    accepted = client.post(
        "/v1/events", json={"events": [{**event, "value": 0, "timestamp": time.time()}]}
    )
    assert accepted.get_json()["accepted"] == 1
    body = _recommend(client, user, "k=3")
    assert body["strategy"] == "cold_start" and body["served_by"] == "cold_start"
    assert "space-0" not in {item["id"] for item in body["items"]}  # seen, still excluded
    examples = {"examples": [{"item_id": "space-0", "weight": 0}]}
    anonymous = client.post("/v1/recommendations", json=examples)
    assert anonymous.status_code == 200 and anonymous.get_json()["strategy"] == "cold_start"


def test_category_filter_repeats_or_commas(client):
    user = new_user_id()
    _post(client, [_event(user, "music-0", "like")])
    for query in ("k=4&category=sports&category=nature", "k=4&category=sports,nature"):
        items = _recommend(client, user, query)["items"]
        assert len(items) == 4 and {_theme(i["id"]) for i in items} <= {"sports", "nature"}


def test_user_summary_lists_recent_items_newest_first(client):
    user = new_user_id()
    start = datetime(2024, 3, 1, tzinfo=UTC)
    events = [
        _event(user, f"nature-{n % 6}", "click", at=(start + timedelta(hours=n)).isoformat())
        for n in range(12)
    ]
    _post(client, events)
    body = client.get(f"/v1/users/{user}").get_json()
    assert body["user_id"] == user and body["event_count"] == 12
    assert body["last_event_at"] == "2024-03-01T11:00:00Z"
    recent = body["recent_items"]
    assert len(recent) == 10
    times = [r["timestamp"] for r in recent]
    assert times == sorted(times, reverse=True)
    assert recent[0] == {
        "id": "nature-5",
        "title": "Desert wildlife",
        "timestamp": "2024-03-01T11:00:00Z",
        "type": "click",
    }


def test_deleting_a_user_removes_events_and_profile(client, runtime):
    user = new_user_id()
    _post(client, [_event(user, "sports-0", "like"), _event(user, "sports-1", "like")])
    assert _recommend(client, user)["strategy"] == "personalized"
    assert client.delete(f"/v1/users/{user}").status_code == 204
    assert client.get(f"/v1/users/{user}").status_code == 404
    assert client.delete(f"/v1/users/{user}").status_code == 404
    with runtime.db.read() as session:
        assert user_ids(session, [user]) == {}
    assert _recommend(client, user)["strategy"] == "cold_start"


def test_empty_and_malformed_event_batches(client, runtime):
    assert _post(client, []) == {"accepted": 0, "duplicates": 0, "rejected": []}
    assert client.post("/v1/events", json={"events": "many"}).status_code == 422
    assert client.post("/v1/events", json={}).status_code == 422
    limit = runtime.settings.max_batch_size
    response = client.post("/v1/events", json={"events": [{}] * (limit + 1)})
    assert response.status_code == 413
    all_bad = _post(client, [{}, {"id": 1}])
    assert all_bad["accepted"] == 0 and [r["index"] for r in all_bad["rejected"]] == [0, 1]
