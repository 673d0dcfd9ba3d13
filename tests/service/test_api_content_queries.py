"""Semantic search and similar items answer by the items' text vectors while a trained model is
active (`service.runtime.Runtime.content_recommender`): the model's index ranks by learned item
vectors, where a text query or an item finds the items the model's users liked, not the ones
that match."""

from __future__ import annotations

from sqlalchemy import delete, select

from store.db import Database
from store.models import IndexVersion
from tests.service.conftest import admin_client, train_on_theme_fans

#: The nature items have no events: only their text says what they are about.
WOLVES = "A wolf pack hunts across the tundra."


def test_search_and_similar_find_matching_items_while_a_model_is_active(
    app_builder, embedder, tmp_path
):
    app = app_builder(f"sqlite:///{tmp_path / 'content.db'}", tmp_path / "data", embedder)
    runtime = app.extensions["driftrec"]
    try:
        client = admin_client(app)
        model_version, _ = train_on_theme_fans(client, runtime)
        assert runtime.index.model_version_id == model_version
        with runtime.db.read() as session:
            plain = session.scalars(
                select(IndexVersion.id).where(IndexVersion.model_version_id.is_(None))
            ).all()
        assert plain, "reindex builds the plain index beside the model's"

        found = client.post("/v1/search", json={"query": WOLVES, "k": 3}).get_json()
        assert found["items"][0]["id"] == "nature-3", found["items"]
        assert found["model_version"] is None and found["index_version"] in plain

        similar = client.get("/v1/items/nature-3/similar?k=3").get_json()
        assert [item["id"].split("-")[0] for item in similar["items"]] == ["nature"] * 3

        # A new item is searchable at once, by its text.
        item = {"id": "nature-new", "title": "Arctic foxes", "text": "Foxes in the snow."}
        assert client.put("/v1/items", json={"items": [item]}).status_code == 200
        found = client.post("/v1/search", json={"query": "Foxes in the snow", "k": 1}).get_json()
        assert found["items"][0]["id"] == "nature-new"
    finally:
        runtime.close()


def test_until_a_plain_index_is_built_they_answer_from_the_models(app_builder, embedder, tmp_path):
    """A model activated before this release built no plain index: search answers from the
    model's index (without holding the catalogue in an overlay meanwhile) until a reindex
    builds one."""
    url, data = f"sqlite:///{tmp_path / 'older.db'}", tmp_path / "data"
    first = app_builder(url, data, embedder)
    try:
        model_version, _ = train_on_theme_fans(admin_client(first), first.extensions["driftrec"])
    finally:
        first.extensions["driftrec"].close()
    older = Database(url)
    try:
        with older.write() as session:  # as an older release left it
            session.execute(delete(IndexVersion).where(IndexVersion.model_version_id.is_(None)))
    finally:
        older.dispose()
    app = app_builder(url, data, embedder, reload_interval_s=0.0)
    runtime = app.extensions["driftrec"]
    try:
        client = admin_client(app)
        found = client.post("/v1/search", json={"query": WOLVES, "k": 3}).get_json()
        assert found["model_version"] == model_version
        assert None not in runtime.experiments._treatments  # no plain live index made
        runtime.reindex()
        found = client.post("/v1/search", json={"query": WOLVES, "k": 3}).get_json()
        assert found["model_version"] is None and found["items"][0]["id"] == "nature-3"
    finally:
        runtime.close()
