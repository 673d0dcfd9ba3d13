"""The offline evaluation harness: metrics by hand, the split's tie-breaking, and the
`driftrec evaluate` command end to end on a small MovieLens-format dataset (real MiniLM, real
FAISS, real SQLite)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from interest.evaluation import metrics
from interest.evaluation.baselines import Ease, Popularity, interaction_matrix
from interest.evaluation.ranking import rank_cases, target_rank, top_k
from interest.evaluation.split import Interactions, leave_last_out, replay_split
from service.cli_evaluate import evaluate_command

GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi"]


# --- metrics ----------------------------------------------------------------------------------


def test_metrics_on_three_users_with_known_ranks():
    # User a: target at rank 1, user b: rank 3, user c: rank 12 (outside the top 10).
    ranks = np.array([1.0, 3.0, 12.0])
    assert metrics.hit_rate(ranks, 10) == pytest.approx(2 / 3)
    # DCG per user: 1/log2(2) = 1, 1/log2(4) = 0.5, 0 -> mean 0.5.
    assert metrics.ndcg(ranks, 10) == pytest.approx(0.5)
    assert metrics.recall(ranks, 20) == pytest.approx(1.0)
    assert metrics.ndcg(ranks, 2) == pytest.approx(1 / 3)
    assert metrics.hit_rate(np.array([math.inf, 2.0]), 10) == pytest.approx(0.5)


def test_coverage_counts_distinct_items_over_the_catalogue():
    assert metrics.coverage([[0, 1, 2], [2, 3], []], 8) == pytest.approx(4 / 8)


def test_bootstrap_interval_brackets_the_mean_and_is_reproducible():
    values = np.r_[np.ones(30), np.zeros(70)]
    lo, hi = metrics.bootstrap_ci(values, n_resamples=500, seed=3)
    assert lo < 0.3 < hi
    assert (lo, hi) == metrics.bootstrap_ci(values, n_resamples=500, seed=3)
    assert metrics.bootstrap_ci(np.full(10, 0.25)) == pytest.approx((0.25, 0.25))


def test_tied_scores_rank_ahead_of_the_target_and_history_is_excluded():
    row = np.array([5.0, 3.0, 3.0, -np.inf, 3.0, 1.0])
    assert target_rank(row, 2) == 4  # item 0 scores higher, items 1 and 4 tie with it
    assert target_rank(row, 0) == 1
    assert target_rank(row, 3) == math.inf
    assert top_k(row, 3).tolist() == [0, 1, 2]  # ties filled by lower item id
    assert top_k(row, 10).tolist() == [0, 1, 2, 4, 5]


# --- splits -----------------------------------------------------------------------------------


def test_leave_last_out_sorts_by_time_then_item_id():
    # user 0: items 5 and 2 at the same time t=10 (tie -> 2 before 5), then item 7 at t=5.
    log = Interactions.build(
        users=[0, 0, 0, 1, 1, 2], items=[5, 2, 7, 1, 3, 4], times=[10, 10, 5, 1, 2, 9]
    )
    split = leave_last_out(log)
    assert split.cases.targets.tolist() == [5, 3]  # user 2 has one interaction: not evaluated
    assert split.cases.users.tolist() == [0, 1]
    assert [h.tolist() for h in split.cases.histories] == [[7, 2], [1]]
    # Training data: every interaction except each user's last (user 2's only one is its last).
    pairs = zip(split.train.users.tolist(), split.train.items.tolist(), strict=True)
    assert sorted(pairs) == [
        (0, 2),
        (0, 7),
        (1, 1),
    ]
    # Validation: the last training interaction of each user with two or more.
    valid = leave_last_out(split.train)
    assert valid.cases.targets.tolist() == [2]


def test_replay_split_cuts_at_the_time_quantile_and_keeps_growing_histories():
    times = np.arange(10, dtype=float)
    log = Interactions.build(users=[0, 1] * 5, items=list(range(10)), times=times)
    split = replay_split(log, 0.8)
    assert split.cut == 8.0
    assert split.cases.targets.tolist() == [8, 9]
    assert [h.tolist() for h in split.cases.histories] == [[0, 2, 4, 6], [1, 3, 5, 7]]
    assert len(split.train) == 8


# --- baselines --------------------------------------------------------------------------------


def test_ease_dual_form_equals_the_item_side_inverse():
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(6), 5)
    items = rng.integers(0, 12, size=len(users))
    train = Interactions.build(users, items, np.arange(len(users), dtype=float))
    dual = Ease(train, 12, 10.0)  # 6 users < 12 items: Woodbury form
    assert dual.dual
    x = interaction_matrix(train, 12).toarray()
    p = np.linalg.inv(x.T @ x + 10.0 * np.eye(12))
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    rows = rng.random((3, 12))
    np.testing.assert_allclose(dual.score(rows), rows @ b, atol=1e-10)


def test_popularity_ranks_by_training_counts():
    train = Interactions.build([0, 1, 2, 2], [1, 1, 2, 1], [0, 1, 2, 3])
    split = leave_last_out(Interactions.build([0, 0], [3, 2], [0, 1]))
    ranked = rank_cases(Popularity(train, 4), split.cases, 4, half_life_days=math.inf)
    # Scores: item1=3, item2=1, item0=0, item3 in history -> item 2 ranks second.
    assert ranked.ranks.tolist() == [2.0]
    assert ranked.top[0].tolist() == [1, 2, 0]


# --- end to end -------------------------------------------------------------------------------


def _write_movielens(directory: Path, n_movies: int = 30, n_users: int = 16) -> None:
    """An ml-latest-small style dataset: users who mostly like one genre, drifting over time."""
    rng = np.random.default_rng(7)
    directory.mkdir()
    movie_genres = {m: GENRES[m % len(GENRES)] for m in range(1, n_movies + 1)}
    with open(directory / "movies.csv", "w", encoding="utf-8") as out:
        out.write("movieId,title,genres\n")
        for movie, genre in movie_genres.items():
            other = GENRES[(movie * 7) % len(GENRES)]
            genres = genre if other == genre else f"{genre}|{other}"
            out.write(f'{movie},"Movie {movie}, The ({1990 + movie})",{genres}\n')
    t0 = 1_500_000_000
    with open(directory / "ratings.csv", "w", encoding="utf-8") as out:
        out.write("userId,movieId,rating,timestamp\n")
        for user in range(1, n_users + 1):
            favourite = GENRES[user % len(GENRES)]
            liked = [m for m, g in movie_genres.items() if g == favourite]
            others = [m for m in movie_genres if m not in liked]
            n = int(rng.integers(10, 15))
            picks = list(rng.permutation(liked))[: n // 2]
            picks += [m for m in rng.permutation(others) if m not in picks][: n - len(picks)]
            rng.shuffle(picks)
            times = np.sort(rng.integers(0, 60 * 86_400, size=len(picks)))
            for movie, t in zip(picks, times, strict=True):
                out.write(f"{user},{movie},{rng.integers(1, 11) / 2},{t0 + int(t)}\n")


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["leave-last-out", "replay"])
def test_evaluate_command_end_to_end(tmp_path: Path, protocol: str):
    data = tmp_path / "ml-tiny"
    _write_movielens(data)
    out = tmp_path / "result.json"
    cache = tmp_path / "cache"
    args = [
        str(data),
        "--protocol",
        protocol,
        "--methods",
        "popularity,ease,content_mean,driftrec",
        "--out",
        str(out),
        "--cache-dir",
        str(cache),
    ]
    result = CliRunner().invoke(evaluate_command, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "popularity" in result.output and "content_mean" in result.output

    doc = json.loads(out.read_text())
    assert doc["protocol"] == protocol
    assert doc["n_items"] == 30 and doc["n_users"] == 16
    assert set(doc["results"]) == {"popularity", "ease", "content_mean", "driftrec"}
    for name, res in doc["results"].items():
        for key in ("hr@10", "ndcg@10", "recall@20", "coverage@10"):
            assert 0.0 <= res[key] <= 1.0, (name, key)
        lo, hi = res["ndcg@10_ci95"]
        assert 0.0 <= lo <= res["ndcg@10"] <= hi <= 1.0
        assert res["ndcg@10"] <= res["hr@10"] <= res["recall@20"]
        assert res["n_cases"] == doc["n_cases"] > 0
        assert "settings" in res and "timings_s" in res
        if protocol == "replay":
            assert "new_item_hr@10" in res and "new_item_count" in res
    assert doc["results"]["ease"]["settings"]["lambda"] in (50, 100, 250, 500, 1000)
    assert doc["results"]["content_mean"]["settings"]["profile_half_life_s"] == "inf"
    if protocol == "leave-last-out":
        assert doc["n_cases"] == 16
    else:
        assert "cut" in doc
    # The second run reads every embedding from the cache.
    assert list(cache.glob("embeddings-*.npz"))


def test_embedding_cache_refills_identical_vectors_by_content_hash(tmp_path: Path):
    from interest.evaluation.embedding_cache import EmbeddingCache
    from store.db import Database
    from store.items import ItemInput, stale_vector_ids, store_vectors, upsert_items
    from store.migrate import upgrade
    from store.models import Item

    def database(name: str) -> Database:
        url = f"sqlite:///{tmp_path / name}"
        upgrade(url)
        db = Database(url)
        with db.write() as session:
            upsert_items(
                session, [ItemInput(f"i{n}", f"Item {n}", "Genres: Drama") for n in range(5)]
            )
        return db

    first = database("a.db")
    vectors = np.random.default_rng(0).random((5, 4)).astype(np.float32)
    with first.write() as session:
        items = sorted(session.query(Item).all(), key=lambda i: i.id)
        store_vectors(
            session,
            "m",
            4,
            ((i.id, i.content_hash, v.tobytes()) for i, v in zip(items, vectors, strict=True)),
        )
    assert EmbeddingCache(tmp_path / "cache", "m").save_from(first) == 5

    second = database("b.db")
    assert EmbeddingCache(tmp_path / "cache", "other-model").prefill(second) == 0
    assert EmbeddingCache(tmp_path / "cache", "m").prefill(second) == 5
    with second.read() as session:
        assert stale_vector_ids(session, "m") == []
        stored = {
            i.external_id: np.frombuffer(i.vector, dtype=np.float32) for i in session.query(Item)
        }
    for n in range(5):
        np.testing.assert_array_equal(stored[f"i{n}"], vectors[n])
    first.dispose()
    second.dispose()
