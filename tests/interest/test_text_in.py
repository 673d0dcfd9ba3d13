"""Buffered events on items the model has no row for enter the query through ``text_in``."""

import math

import numpy as np
import pytest

from interest.linear import Histories
from interest.model import InterestModel
from interest.profile import ProfileState
from interest.query import PlainBlend
from interest.train import TrainConfig, TrainingData, ValidationSet, choose_cold_weights
from tests.interest.conftest import small_model


def _model(text_in_weight: float, half_life_s: float = math.inf) -> InterestModel:
    model = small_model(seed=5, half_life_s=half_life_s, text_in_weight=text_in_weight)
    model.text_in = np.random.default_rng(6).normal(size=(4, 3)).astype(np.float32)
    return model


def _state(events: list[tuple[float, int]], vectors: dict[int, np.ndarray]) -> ProfileState:
    state = ProfileState.empty((math.inf,), 4)
    for t, item in events:
        state.apply(np.zeros(4, np.float32), 1.0, t, item, buffer_size=5)
    state.text_vectors.update(vectors)
    return state


RAW = {90: np.array([1.0, 0.0, 2.0, -1.0], np.float32), -1: np.array([0, 1, 0, 1], np.float32)}


def test_unseen_items_add_their_text_mapped_input_vector_at_the_text_in_weight():
    model = _model(text_in_weight=0.5)
    state = _state([(0.0, 1), (1.0, 90), (2.0, -1)], RAW)
    expected = model.u[0] + 0.5 * (RAW[90] @ model.text_in + RAW[-1] @ model.text_in)
    np.testing.assert_allclose(model.encode([state], now=2.0)[0], expected, rtol=1e-5)
    # Without its raw vector an unseen item adds nothing, and the model asks for it; negative
    # ids (an anonymous request's text examples) are never fetched.
    bare = _state([(0.0, 1), (1.0, 90), (2.0, -1), (3.0, 91)], {})
    assert model.missing_text_vectors(bare) == [90, 91]
    np.testing.assert_allclose(model.encode([bare], now=3.0)[0], model.u[0], rtol=1e-6)
    assert model.missing_text_vectors(state) == []


def test_text_in_weight_zero_ignores_raw_vectors_and_asks_for_none():
    model = _model(text_in_weight=0.0)
    state = _state([(0.0, 1), (1.0, 90)], RAW)
    np.testing.assert_allclose(model.encode([state], now=1.0)[0], model.u[0], rtol=1e-6)
    assert model.missing_text_vectors(_state([(0.0, 1), (1.0, 90)], {})) == []
    assert PlainBlend(60.0).missing_text_vectors(state) == []


def test_short_half_life_curve_starts_at_the_newest_blended_event():
    # Half-life 1 s, the newest event 10,000 s after the known one is on an unseen item with a
    # raw vector: the query is that item's text-mapped vector (the known one has decayed away).
    model = _model(text_in_weight=1.0, half_life_s=1.0)
    state = _state([(0.0, 1), (10_000.0, 90)], RAW)
    np.testing.assert_allclose(
        model.encode([state], now=10_000.0)[0], RAW[90] @ model.text_in, rtol=1e-5
    )


def _clustered_data(back_to_old_cluster: bool) -> TrainingData:
    """Four clusters of 10 items with events before the cut and 5 first seen after it, texts
    near their cluster's centre; 4 items with no event at all.

    Before the cut each user rates six items of one cluster. After it, one new item of the next
    cluster, then four items of that cluster with events, or with the flag on, of their own
    cluster again.
    """
    rng = np.random.default_rng(11)
    clusters, known_per, new_per, dim = 4, 10, 5, 16
    centres = rng.normal(size=(clusters, dim))
    n_known, n_new = clusters * known_per, clusters * new_per
    cluster_of = np.concatenate(
        [np.repeat(np.arange(clusters), known_per), np.repeat(np.arange(clusters), new_per)]
    )
    cluster_of = np.concatenate([cluster_of, rng.integers(0, clusters, size=4)])
    text = (centres[cluster_of] + 0.3 * rng.normal(size=(len(cluster_of), dim))).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    rows, times = [], []
    clock = 0.0
    for user in range(80):
        own, nxt = user % clusters, (user + 1) % clusters
        before = own * known_per + rng.choice(known_per, size=6, replace=False)
        new = n_known + nxt * new_per + rng.integers(new_per)
        then = (own if back_to_old_cluster else nxt) * known_per + rng.choice(
            np.setdiff1d(np.arange(known_per), before - own * known_per)
            if back_to_old_cluster
            else np.arange(known_per),
            size=4,
            replace=False,
        )
        rows.append(np.concatenate([before, [new], then]).astype(np.int64))
        times.append(np.concatenate([clock + np.arange(6.0), 10_000.0 + clock + np.arange(5.0)]))
        clock += 10.0
    n_items = n_known + n_new
    return TrainingData(
        item_ids=np.arange(n_items, dtype=np.int64) + 100,
        text=text[:n_items],
        all_ids=np.arange(len(text), dtype=np.int64) + 100,
        all_text=text,
        histories=Histories(rows, times, [np.ones(11) for _ in rows]),
    )


@pytest.mark.parametrize("back", [False, True])
def test_text_in_weight_is_chosen_on_time_cut_validation(back):
    config = TrainConfig(time_cut_quantile=0.5, rank=64, cold_weight_grid=(0.0,))
    validation = ValidationSet.build_time_cut(_clustered_data(back), config, buffer_size=50)
    cold_weight, text_in_weight, metrics = choose_cold_weights(
        validation,
        l2=1.0,
        half_life=1.0,
        content_half_life_s=math.inf,
        content_weight=0.0,
        config=config,
    )
    assert cold_weight == 0.0
    if back:
        # The new item says nothing about what follows: mapping its text into the query only
        # pulls towards the wrong cluster, and the weight stays 0.
        assert text_in_weight == 0.0
    else:
        # What follows a new item is its own cluster: its text-mapped input vector finds it.
        assert text_in_weight > 0
        assert (
            metrics["time_cut_validation_ndcg@10"]
            > metrics["time_cut_validation_ndcg@10_without_text_in"]
        )
