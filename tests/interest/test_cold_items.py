"""Items the model has no events for: the cold term, its weight chosen on time-cut validation."""

import math

import numpy as np
import pytest

from interest.linear import Histories
from interest.model import InterestModel
from interest.profile import ProfileState
from interest.train import (
    TrainConfig,
    TrainingData,
    ValidationSet,
    choose_cold_weights,
    hold_out_after,
)
from tests.interest.conftest import small_model


def _model(cold_weight: float, half_life_s: float = math.inf) -> InterestModel:
    return small_model(seed=4, half_life_s=half_life_s, cold_weight=cold_weight)


def _state(events: list[tuple[float, int]]) -> ProfileState:
    state = ProfileState.empty((math.inf,), 4)
    for t, item in events:
        state.apply(np.zeros(4, np.float32), 1.0, t, item, buffer_size=5)
    return state


def test_cold_term_scores_unseen_items_by_the_share_of_unseen_items_in_the_buffer():
    model = _model(cold_weight=0.5)
    # One event on a known item, three on items the model has never seen.
    state = _state([(0.0, 1), (1.0, 90), (2.0, 91), (3.0, 92)])
    query = model.encode([state], now=3.0)[0]
    assert query.shape == (3 + 1,)
    items = model.item_vectors(np.array([2, 99]), np.zeros((2, 4), np.float32))
    np.testing.assert_array_equal(items[:, -1], [0.0, 1.0])
    linear_norm = float(np.linalg.norm(model.u[0]))
    # The unseen item (text map zero here) scores 0.5 * |q| * v_scale * 3/4 by the cold term.
    np.testing.assert_allclose(items[1] @ query, 0.5 * linear_norm * 2.0 * 0.75, rtol=1e-5)
    # A buffer of known items only leaves unseen items nothing from the cold term.
    known_only = model.encode([_state([(0.0, 1), (1.0, 2)])], now=1.0)[0]
    assert known_only[-1] == 0.0
    # Without the term the model has no such coordinate.
    assert _model(cold_weight=0.0).dim == 3


def test_short_half_life_query_starts_at_the_newest_known_item():
    # Half-life 1 s, newest event on an unknown item 10,000 s later: the plain curve would
    # underflow to a zero query; the linear part must still be the known item's input vector.
    model = _model(cold_weight=1.0, half_life_s=1.0)
    query = model.encode([_state([(0.0, 1), (10_000.0, 90)])], now=10_000.0)[0]
    np.testing.assert_allclose(query[:3], model.u[0], rtol=1e-6)
    # Every recency weight is on the unknown item, so the cold coordinate carries the scale.
    np.testing.assert_allclose(query[-1], np.linalg.norm(model.u[0]) * 2.0, rtol=1e-5)


def test_hold_out_after_keeps_earlier_events_and_ranks_each_later_one_with_its_history():
    rows = [np.array([0, 1, 2, 3]), np.array([4, 5])]
    times = [np.array([1.0, 2.0, 10.0, 11.0]), np.array([12.0, 13.0])]
    histories = Histories(rows, times, [np.ones(4), np.ones(2)])
    train, valid, targets, seen, users = hold_out_after(histories, cut=10.0)
    assert [list(r) for r in train.rows] == [[0, 1], []]
    # User 1 had nothing before the cut: their first event has no history and is left out.
    assert targets.tolist() == [2, 3, 5]
    assert [list(s) for s in seen] == [[0, 1], [0, 1, 2], [4]]
    assert users.tolist() == [0, 0, 1]
    # Each target's history carries its own times (the recency weights are computed from them).
    assert [list(t) for t in valid.times] == [[1.0, 2.0], [1.0, 2.0, 10.0], [12.0]]


def _time_cut_data(explorers_stay_on_new_items: bool) -> TrainingData:
    """40 items with events before the cut, 20 first seen after it, 10 with no event at all.

    Every user rates known items before the cut. After it, half of them (the explorers) rate
    six new items in a row, or with the flag off one new item and then known ones; the others
    rate known items.
    """
    rng = np.random.default_rng(7)
    n_known, n_new, n_never, dim = 40, 20, 10, 8
    text = rng.normal(size=(n_known + n_new + n_never, dim)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    rows, times = [], []
    clock = 0.0
    for user in range(40):
        before = rng.choice(n_known, size=6, replace=False)
        if user % 2 == 0:
            if explorers_stay_on_new_items:
                after = n_known + rng.choice(n_new, size=6, replace=False)
            else:
                first = n_known + rng.choice(n_new, size=1)
                known = rng.choice(np.setdiff1d(np.arange(n_known), before), 5, replace=False)
                after = np.concatenate([first, known])
        else:
            after = rng.choice(np.setdiff1d(np.arange(n_known), before), size=6, replace=False)
        rows.append(np.concatenate([before, after]).astype(np.int64))
        # Before the cut: times below 1,000; after it: above 10,000.
        times.append(np.concatenate([clock + np.arange(6.0), 10_000.0 + clock + np.arange(6.0)]))
        clock += 10.0
    histories = Histories(rows, times, [np.ones(12) for _ in rows])
    n_items = n_known + n_new
    return TrainingData(
        item_ids=np.arange(n_items, dtype=np.int64) + 100,
        text=text[:n_items],
        all_ids=np.arange(n_items + n_never, dtype=np.int64) + 100,
        all_text=text,
        histories=histories,
    )


@pytest.mark.parametrize("stay", [True, False])
def test_cold_weight_is_chosen_on_time_cut_validation_by_what_follows_new_items(stay):
    config = TrainConfig(time_cut_quantile=0.5, rank=64, text_in_weight_grid=(0.0,))
    validation = ValidationSet.build_time_cut(_time_cut_data(stay), config, buffer_size=50)
    assert validation.extra_text.shape[0] == 10  # items with no event compete too
    weight, _, metrics = choose_cold_weights(
        validation,
        l2=1.0,
        half_life=math.inf,
        content_half_life_s=math.inf,
        content_weight=0.0,
        config=config,
    )
    if stay:
        # Explorers keep rating new items: the cold term ranks them, and validation keeps it.
        assert weight > 0
        assert (
            metrics["time_cut_validation_cold_hr@10"]
            > (metrics["time_cut_validation_cold_hr@10_without_cold"])
        )
        assert (
            metrics["time_cut_validation_ndcg@10"]
            > (metrics["time_cut_validation_ndcg@10_without_cold"])
        )
    else:
        # After one new item explorers return to known items: new items never follow new
        # items, so boosting them only costs, and the term stays off.
        assert weight == 0.0
