"""Pagination that never repeats (recomm_id), anonymous recommendations by example, merging
users and attribution stats, through the real service (model, FAISS, SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from store.models import Event, RecommendationSession
from store.types import utcnow
from tests.service.conftest import (
    BACKENDS,
    admin_client,
    both_backends,
    catalogue_items,
    new_user_id,
)

# Sessions, attribution and merge write SQL of their own: run on both backends.
api_database_url = pytest.fixture(scope="module", params=BACKENDS)(both_backends)


@pytest.fixture(autouse=True)
def fresh_wait_budget(monkeypatch):
    """Each test waits as a fresh worker would (`service.recommending.WaitBudget`): tests that
    hold an answer's row back would otherwise spend the one budget of this test process."""
    from service import recommending

    monkeypatch.setattr(recommending, "_WAITS", recommending.WaitBudget())


def _like(client, user: str, items: list[str], **extra) -> None:
    events = [
        {
            "id": uuid.uuid4().hex,
            "user_id": user,
            "item_id": item,
            "type": "like",
            "timestamp": time.time(),
            **extra,
        }
        for item in items
    ]
    response = client.post("/v1/events", json={"events": events})
    assert response.status_code == 200 and response.get_json()["accepted"] == len(items)


def _ok(response) -> dict:
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def _ids(body: dict) -> list[str]:
    return [item["id"] for item in body["items"]]


def test_pages_never_repeat_until_the_catalogue_is_exhausted(client):
    user = new_user_id()
    _like(client, user, ["space-0", "space-1"])
    first = _ok(client.get(f"/v1/users/{user}/recommendations?k=7"))
    recomm_id = first["recomm_id"]
    pages = [_ids(first)]
    while pages[-1]:
        body = _ok(client.get(f"/v1/recommendations/{recomm_id}/next?k=7"))
        assert body["recomm_id"] == recomm_id and body["user_id"] == user
        pages.append(_ids(body))
    shown = [item for page in pages for item in page]
    assert len(shown) == len(set(shown)), "an item repeated across pages"
    everything = {item["id"] for item in catalogue_items()} - {"space-0", "space-1"}
    assert everything <= set(shown)
    assert all(len(page) == 7 for page in pages[:-2])


def test_next_page_keeps_the_request_and_its_k(client):
    user = new_user_id()
    _like(client, user, ["music-0"])
    first = _ok(
        client.post(
            f"/v1/users/{user}/recommendations",
            json={"k": 2, "categories": ["food"], "fields": ["categories"], "explain": True},
        )
    )
    seen = _ids(first)
    for _ in range(2):
        body = _ok(client.get(f"/v1/recommendations/{first['recomm_id']}/next"))
        assert len(body["items"]) == 2
        for item in body["items"]:
            assert item["categories"] == ["food"] and "explanation" in item
        seen += _ids(body)
    assert sorted(seen) == sorted(f"food-{n}" for n in range(6))
    last = _ok(client.get(f"/v1/recommendations/{first['recomm_id']}/next?k=5"))
    assert last["items"] == []


def test_sessions_are_shared_across_workers_and_expire(
    client, app, app_builder, embedder, tmp_path
):
    """A second app over the same database (another gunicorn worker) continues the answer."""
    user = new_user_id()
    _like(client, user, ["nature-0"])
    first = _ok(client.get(f"/v1/users/{user}/recommendations?k=3"))
    url = app.extensions["driftrec"].settings.database_url
    other = app_builder(url, tmp_path / "other-worker", embedder)
    try:
        second = _ok(admin_client(other).get(f"/v1/recommendations/{first['recomm_id']}/next"))
    finally:
        other.extensions["driftrec"].close()
    assert len(second["items"]) == 3 and not set(_ids(second)) & set(_ids(first))

    runtime = app.extensions["driftrec"]
    with runtime.db.write() as session:
        session.execute(
            update(RecommendationSession)
            .where(RecommendationSession.recomm_id == first["recomm_id"])
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    expired = client.get(f"/v1/recommendations/{first['recomm_id']}/next")
    assert expired.status_code == 404 and "expired" in expired.get_json()["error"]["message"]
    assert client.get("/v1/recommendations/no-such-answer/next").status_code == 404
    assert client.get(f"/v1/recommendations/{first['recomm_id']}/next?k=0").status_code == 422


def test_events_carry_their_recomm_id(client, runtime):
    user = new_user_id()
    _like(client, user, ["sports-0"])
    body = _ok(client.get(f"/v1/users/{user}/recommendations?k=2"))
    _like(client, user, [body["items"][0]["id"]], recomm_id=body["recomm_id"])
    with runtime.db.read() as session:
        stored = session.scalars(select(Event.recomm_id).where(Event.recomm_id.is_not(None)))
        assert body["recomm_id"] in set(stored)
    bad = client.post(
        "/v1/events",
        json={
            "events": [
                {
                    "id": uuid.uuid4().hex,
                    "user_id": user,
                    "item_id": "sports-1",
                    "type": "click",
                    "timestamp": time.time(),
                    "recomm_id": "x" * 65,
                }
            ]
        },
    ).get_json()
    assert bad["accepted"] == 0 and "recomm_id" in bad["rejected"][0]["error"]


def test_anonymous_recommendations_by_example(client, runtime, embedder):
    vector = embedder.embed(["Cooking dinner in the kitchen"])[0].tolist()
    body = _ok(
        client.post(
            "/v1/recommendations",
            json={
                "k": 5,
                "examples": [
                    {"item_id": "food-0", "weight": 2},
                    {"text": "baking bread and cakes"},
                    {"vector": vector, "weight": 1.5},
                    {"item_id": "no-such-item"},
                    {"item_id": "space-0", "weight": -3},
                ],
                "explain": True,
            },
        )
    )
    assert body["skipped"] == [{"index": 3, "item_id": "no-such-item", "reason": "unknown item"}]
    assert body["strategy"] == "personalized" and body["recomm_id"]
    ids = _ids(body)
    assert len(ids) == 5 and "food-0" not in ids and "space-0" not in ids
    assert sum(item.startswith("food-") for item in ids) >= 4, ids
    assert any(item["explanation"]["because"] for item in body["items"])
    assert not {"user_id"} & set(body)

    more = _ok(client.get(f"/v1/recommendations/{body['recomm_id']}/next?k=5"))
    assert more["skipped"] == body["skipped"]
    assert len(more["items"]) == 5 and not set(_ids(more)) & (set(ids) | {"food-0"})

    # Only unknown ids: nothing to personalise on, the cold-start list; never an error.
    cold = _ok(client.post("/v1/recommendations", json={"examples": [{"item_id": "nope"}]}))
    assert cold["strategy"] == "cold_start" and len(cold["skipped"]) == 1


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"examples": []},
        {"examples": [{}]},
        {"examples": [{"item_id": "a", "text": "b"}]},
        {"examples": [{"text": ""}]},
        {"examples": [{"vector": [1.0, 2.0]}]},
        {"examples": [{"vector": ["a"]}]},
        # Finite, but past float32's range (the search's): an overflow, not a vector.
        {"examples": [{"vector": [1e39] + [0.0] * 383}]},
        {"examples": [{"item_id": "a", "weight": "heavy"}]},
        {"examples": [{"item_id": "a", "colour": "red"}]},
        {"examples": [{"item_id": "a\x00"}]},
        {"examples": [{"item_id": "a"}], "diversity": 3},
    ],
)
def test_bad_examples_are_422(client, body):
    response = client.post("/v1/recommendations", json=body)
    assert response.status_code == 422, response.get_json()


def test_merge_moves_events_rebuilds_the_profile_and_is_idempotent(client, runtime):
    from interest.rebuild import verify_profiles

    anonymous, user = f"anon-{new_user_id()}", new_user_id()
    _like(client, anonymous, ["food-0", "food-1", "food-2"])
    _like(client, user, ["space-0"])
    pending = _ok(client.get(f"/v1/users/{anonymous}/recommendations?k=2"))

    body = _ok(client.post("/v1/users/merge", json={"from": anonymous, "into": user}))
    assert body == {
        "from": anonymous,
        "into": user,
        "merged": True,
        "moved_events": 3,
        "event_count": 4,
    }
    assert client.get(f"/v1/users/{anonymous}").status_code == 404
    summary = _ok(client.get(f"/v1/users/{user}"))
    assert summary["event_count"] == 4
    assert {i["id"] for i in summary["recent_items"]} == {"food-0", "food-1", "food-2", "space-0"}
    report = verify_profiles(runtime.db, runtime.profile_config, runtime.settings.embedder_model)
    assert not report.drifted
    recommended = _ids(_ok(client.get(f"/v1/users/{user}/recommendations?k=30")))
    assert not {"food-0", "food-1", "food-2", "space-0"} & set(recommended)
    # The anonymous answer's next page continues for the merged user.
    more = _ok(client.get(f"/v1/recommendations/{pending['recomm_id']}/next"))
    assert more["user_id"] == user

    again = _ok(client.post("/v1/users/merge", json={"from": anonymous, "into": user}))
    assert again["merged"] is False and again["moved_events"] == 0 and again["event_count"] == 4
    fresh = _ok(
        client.post("/v1/users/merge", json={"from": new_user_id(), "into": f"new-{new_user_id()}"})
    )
    assert fresh["merged"] is False and fresh["event_count"] == 0
    same = client.post("/v1/users/merge", json={"from": user, "into": user})
    assert same.status_code == 422
    assert client.post("/v1/users/merge", json={"from": user}).status_code == 422


def test_stats_report_click_through_by_model_version(client):
    def blend_row(query: str = "") -> dict:
        body = _ok(client.get(f"/v1/stats{query}"))
        rows = [r for r in body["by_model_version"] if r["model_version"] is None]
        return rows[0] if rows else {"answers": 0, "items_shown": 0, "events": {}}

    before = blend_row()
    user = new_user_id()
    _like(client, user, ["music-1"])
    first = _ok(client.get(f"/v1/users/{user}/recommendations?k=4"))
    _ok(client.get(f"/v1/recommendations/{first['recomm_id']}/next?k=2"))
    clicked = [first["items"][0]["id"], first["items"][1]["id"]]
    _like(client, user, clicked, recomm_id=first["recomm_id"])
    after = blend_row()
    assert after["answers"] == before["answers"] + 1
    assert after["items_shown"] == before["items_shown"] + 6
    assert after["events"].get("like", 0) == before["events"].get("like", 0) + 2
    assert after["click_through"] == pytest.approx(
        after["positive_events"] / after["items_shown"], abs=1e-6
    )
    assert after["arm"] is None
    future = _ok(client.get(f"/v1/stats?since={time.time() + 3600}"))
    assert future["by_model_version"] == []
    assert client.get("/v1/stats?since=someday").status_code == 422


def test_a_just_given_answer_is_waited_for_by_another_worker(
    client, app, app_builder, embedder, tmp_path, monkeypatch
):
    """The answer's row is written after the response; another worker asked for its next page
    meanwhile waits for it, while an unknown id fails at once (or after the short wait, when
    it looks just issued)."""
    from service import recommending
    from service.session_writer import _insert

    runtime = app.extensions["driftrec"]
    release = threading.Event()

    def held_insert(database, rows):
        release.wait(10)
        _insert(database, rows)

    monkeypatch.setattr(runtime.sessions, "_write", held_insert)
    # The other worker is built first: the wait is bounded from the moment the answer was
    # given, and building an app (its index load) took most of that second on a slow machine.
    other = app_builder(runtime.settings.database_url, tmp_path / "other-worker", embedder)
    user = new_user_id()
    _like(client, user, ["nature-1"])
    first = _ok(client.get(f"/v1/users/{user}/recommendations?k=2"))  # answered, row held back
    try:
        timer = threading.Timer(0.3, release.set)
        timer.start()
        started = time.monotonic()
        second = _ok(admin_client(other).get(f"/v1/recommendations/{first['recomm_id']}/next"))
        assert 0.25 <= time.monotonic() - started < recommending.JUST_ISSUED_WAIT_S + 0.5
        assert second["items"] and not set(_ids(second)) & set(_ids(first))

        started = time.monotonic()
        unknown = recommending.new_recomm_id()
        assert admin_client(other).get(f"/v1/recommendations/{unknown}/next").status_code == 404
        waited = time.monotonic() - started
        assert recommending.JUST_ISSUED_WAIT_S - 0.1 <= waited < recommending.JUST_ISSUED_WAIT_S + 1
        started = time.monotonic()
        not_recent = uuid.uuid4().hex  # its first 12 digits read as a time far from now
        assert admin_client(other).get(f"/v1/recommendations/{not_recent}/next").status_code == 404
        assert time.monotonic() - started < 0.5
    finally:
        release.set()
        other.extensions["driftrec"].close()


def test_stats_count_an_event_whose_answer_another_worker_is_still_writing(
    client, app, app_builder, embedder, tmp_path, monkeypatch
):
    """An event names an answer whose row the answering worker has not committed yet: the
    stats of another worker wait for that row (recent ids only) and count the event."""
    from service import recommending
    from service.session_writer import _insert

    runtime = app.extensions["driftrec"]
    release = threading.Event()

    def held_insert(database, rows):
        release.wait(10)
        _insert(database, rows)

    other = app_builder(runtime.settings.database_url, tmp_path / "other-worker", embedder)
    try:
        stats = admin_client(other)

        def likes() -> int:
            rows = _ok(stats.get("/v1/stats"))["by_model_version"]
            return sum(r["events"].get("like", 0) for r in rows if r["model_version"] is None)

        before = likes()
        monkeypatch.setattr(runtime.sessions, "_write", held_insert)
        user = new_user_id()
        _like(client, user, ["nature-2"])
        first = _ok(client.get(f"/v1/users/{user}/recommendations?k=2"))  # its row held back
        _like(client, user, [first["items"][0]["id"]], recomm_id=first["recomm_id"])
        timer = threading.Timer(0.3, release.set)
        timer.start()
        started = time.monotonic()
        assert likes() == before + 1
        assert 0.25 <= time.monotonic() - started < recommending.JUST_ISSUED_WAIT_S + 0.5
    finally:
        release.set()
        other.extensions["driftrec"].close()


def test_erasing_a_user_deletes_the_answers_they_were_given(client, runtime):
    user, other = new_user_id(), new_user_id()
    for who in (user, other):
        _like(client, who, ["space-0"])
    mine = _ok(client.get(f"/v1/users/{user}/recommendations?k=2"))["recomm_id"]
    theirs = _ok(client.get(f"/v1/users/{other}/recommendations?k=2"))["recomm_id"]
    runtime.sessions.flush()

    assert client.delete(f"/v1/users/{user}").status_code == 204
    assert client.get(f"/v1/recommendations/{mine}/next").status_code == 404
    _ok(client.get(f"/v1/recommendations/{theirs}/next"))
    with runtime.db.read() as session:
        names = select(RecommendationSession.user_external_id)
        assert user not in set(session.scalars(names))


def test_concurrent_next_pages_of_one_answer_never_repeat_an_item(app, client):
    user = new_user_id()
    _like(client, user, ["space-0"])
    first = _ok(client.get(f"/v1/users/{user}/recommendations?k=3"))
    pages: list[list[str]] = []
    start = threading.Barrier(4)

    def next_page() -> None:
        own = admin_client(app)
        start.wait()
        pages.append(_ids(_ok(own.get(f"/v1/recommendations/{first['recomm_id']}/next?k=3"))))

    threads = [threading.Thread(target=next_page) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    shown = _ids(first) + [item for page in pages for item in page]
    assert len(pages) == 4 and all(len(page) == 3 for page in pages), pages
    assert len(shown) == len(set(shown)), pages


def test_ids_that_only_look_just_issued_cannot_hold_a_worker(client, monkeypatch):
    """Anyone can make an id that looks just issued and whose row never comes: waiting for such
    ids takes at most a share of a process's time, then they are refused at once."""
    from service import recommending

    monkeypatch.setattr(recommending, "_WAITS", recommending.WaitBudget(share=0.0, cap=0.3))
    started = time.monotonic()
    for _ in range(5):
        forged = recommending.new_recomm_id()
        assert client.get(f"/v1/recommendations/{forged}/next").status_code == 404
    assert time.monotonic() - started < 0.3 + 0.5  # the budget, then no waiting at all
