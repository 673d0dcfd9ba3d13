"""A trained model's transition term in production: the next item in the order users went
through items ranks first, where the symmetric linear part alone ties it with the previous one."""

import math
import time

from interest.train import TrainConfig
from store.items import ids_by_external
from tests.service.conftest import admin_client, train_on_theme_fans

#: Each fan likes four consecutive items of a theme in order (item k, then k + 1, ...); with
#: one latest event held out per user the fit part still has transitions to learn from. With no
#: recency (and lambda 10) the linear part ranks the item after a fan's three no better than the
#: one before them, which the transition term tells apart, so validation keeps it. The other
#: terms are off.
SEQUENTIAL = TrainConfig(
    validation_per_user=1,
    half_life_grid_s=(math.inf,),
    l2_grid=(10.0,),
    transition_weight_grid=(0.0, 4.0),
    transition_half_life_grid_events=(1.0,),
    transition_l2_grid=(1.0,),
    text_in_weight_grid=(0.0,),
    cold_weight_grid=(0.0,),
    content_weight_grid=(0.0,),
    use_correction=False,
)


def _scores(client, user: str) -> dict[str, float]:
    body = client.get(f"/v1/users/{user}/recommendations?k=3").get_json()
    return {item["id"]: item["score"] for item in body["items"]}


def test_the_item_that_usually_comes_next_ranks_first(app_builder, embedder, tmp_path):
    app = app_builder(f"sqlite:///{tmp_path / 'seq.db'}", tmp_path / "data", embedder)
    runtime = app.extensions["driftrec"]
    try:
        client = admin_client(app)
        version, _ = train_on_theme_fans(client, runtime, SEQUENTIAL)
        model = runtime.encoders.get(version)
        assert model.config.transition_weight == 4.0 and model.transition_dim > 0, model.metrics
        like = {"user_id": "newcomer", "item_id": "space-2", "type": "like"}
        event = {**like, "id": "newcomer-0", "timestamp": time.time()}
        assert client.post("/v1/events", json={"events": [event]}).get_json()["accepted"] == 1
        scores = _scores(client, "newcomer")
        # space-1 and space-3 go with space-2 equally often: the linear part alone ties them.
        with runtime.db.read() as session:
            ids = ids_by_external(session, ["space-1", "space-2", "space-3"])
        before, seen, after = model.rows([ids["space-1"], ids["space-2"], ids["space-3"]])
        linear = model.u[seen] @ model.v[[before, after]].T
        assert abs(linear[0] - linear[1]) < 1e-3 * abs(linear).max()
        # space-3 is the one that came after it, and the transition term ranks it first.
        assert max(scores, key=scores.__getitem__) == "space-3"
        assert scores["space-3"] - scores.get("space-1", -math.inf) > 0.1 * abs(scores["space-3"])
    finally:
        runtime.close()
