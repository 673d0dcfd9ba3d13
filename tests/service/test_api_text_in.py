"""A trained model's text-in term in production: buffered items the model has no row for move
the query through their stored raw vectors (fetched by the Recommender only when the buffer has
such items), and an anonymous request's text examples through the vectors it embedded."""

import threading
import time

from sqlalchemy import event

from interest.train import TrainConfig
from tests.service.conftest import admin_client, train_on_theme_fans

#: Text-in on at weight 1; the other terms off, so nothing else can rank the new item's fans.
FORCED = TrainConfig(
    text_in_weight_grid=(1.0,),
    cold_weight_grid=(0.0,),
    content_weight_grid=(0.0,),
    use_correction=False,
)
NEW_ITEM = {
    "id": "music-new",
    "title": "String quartet",
    "text": "Violins, viola and cello play chamber music by Beethoven.",
    "categories": ["music"],
}


def _music(body: dict) -> int:
    return sum(item["id"].startswith("music-") for item in body["items"])


def test_items_newer_than_the_model_and_text_examples_move_the_query(
    app_builder, embedder, tmp_path
):
    app = app_builder(f"sqlite:///{tmp_path / 'textin.db'}", tmp_path / "data", embedder)
    runtime = app.extensions["driftrec"]
    try:
        client = admin_client(app)
        version, _ = train_on_theme_fans(client, runtime, FORCED)
        # An item added after training, and a listener whose only event is on it.
        assert client.put("/v1/items", json={"items": [NEW_ITEM]}).status_code == 200
        runtime.reindex()
        listener = {
            "id": "listener-0",
            "user_id": "listener",
            "item_id": "music-new",
            "type": "like",
            "timestamp": time.time(),
        }
        assert client.post("/v1/events", json={"events": [listener]}).get_json()["accepted"] == 1

        body = client.get("/v1/users/listener/recommendations?k=4").get_json()
        assert body["model_version"] == version and body["strategy"] == "personalized"
        assert _music(body) >= 3, body["items"]
        assert body["items"][0]["score"] > 0

        # One query more than for a user whose buffer the model knows, and only for them
        # (counted through SQLAlchemy: the profile read runs past it, `store.direct_read`;
        # the query's own BEGIN is not counted, nor the session writer's INSERT of the answer,
        # which its own thread commits whenever its batch is due).
        statements: list[str] = []
        requesting = threading.get_ident()

        def count(conn, cursor, statement, *args):  # type: ignore[no-untyped-def]
            if threading.get_ident() == requesting and not statement.startswith("BEGIN"):
                statements.append(statement)

        def queries(user: str) -> int:
            runtime.recommender.for_user(user, 4)  # warm caches first
            runtime.sessions.flush()  # earlier answers' rows are written by another thread
            statements.clear()
            event.listen(runtime.db.engine, "before_cursor_execute", count)
            try:
                runtime.recommender.for_user(user, 4)
            finally:
                event.remove(runtime.db.engine, "before_cursor_execute", count)
            return len(statements)

        assert queries("listener") == queries("music-fan-0") + 1

        anonymous = client.post(
            "/v1/recommendations",
            json={"k": 4, "examples": [{"text": "a cello and violin recital"}]},
        ).get_json()
        assert anonymous["model_version"] == version
        assert _music(anonymous) >= 3, anonymous["items"]
        assert anonymous["items"][0]["score"] > 0
    finally:
        runtime.close()
