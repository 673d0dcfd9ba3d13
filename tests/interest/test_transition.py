"""The transition term: SLIT's closed form, factorised, served and kept only when it validates."""

import dataclasses
import math

import numpy as np
import pytest

from interest.linear import Histories, TransitionSpectrum, transition_rows
from interest.model import load_model
from interest.profile import ProfileState
from interest.train import (
    TrainConfig,
    TrainingData,
    TransitionChoice,
    ValidationSet,
    choose_content_weight,
    choose_linear_settings,
    choose_transition,
    fit_linear,
)
from tests.interest.conftest import small_model


def _sequences(n_users: int, n_items: int, seed: int = 0) -> Histories:
    rng = np.random.default_rng(seed)
    rows = [rng.integers(0, n_items, size=rng.integers(2, 9)) for _ in range(n_users)]
    return Histories(
        rows,
        [np.arange(len(r), dtype=float) for r in rows],
        [rng.uniform(0.5, 2.0, size=len(r)) for r in rows],
    )


def test_transition_rows_weigh_the_events_before_each_one_by_position():
    # Event weights do not count in the fit (as in EASE's binary matrix), only in the query.
    histories = Histories([np.array([3, 1, 3, 2])], [np.arange(4.0)], [np.array([1, 2, 1, 4.0])])
    s, targets = transition_rows(histories, n_items=4, buffer_size=2, half_life_events=1.0)
    assert targets.tolist() == [1, 3, 2]
    expected = np.array(
        [
            [0, 0, 0, 1],  # before item 1: item 3
            [0, 1, 0, 0.5],  # before the second 3: item 1 (newest), item 3 one place back
            [0, 0.5, 0, 1],  # buffer of 2: item 1 one place back, item 3 newest
        ]
    )
    np.testing.assert_allclose(s.toarray(), expected)


@pytest.mark.parametrize(("n_users", "n_items"), [(3, 20), (40, 10)])  # dual and primal forms
@pytest.mark.parametrize("lam", [0.3, 5.0])
def test_factors_equal_the_closed_form_ridge_solution(n_users, n_items, lam):
    histories = _sequences(n_users, n_items)
    spectrum = TransitionSpectrum(histories, n_items, buffer_size=4, half_life_events=2.0)
    u_t, v_t = spectrum.factors(lam, rank=1000)
    s, targets = transition_rows(histories, n_items, buffer_size=4, half_life_events=2.0)
    s = s.toarray()
    t = np.eye(n_items)[targets]
    expected = np.linalg.solve(s.T @ s + lam * np.eye(n_items), s.T @ t)
    np.testing.assert_allclose(u_t.astype(np.float64) @ v_t.T, expected, atol=1e-5)


def _with_transition(weight: float, half_life_events: float = 1.0):
    model = small_model(seed=4, transition_weight=weight, transition_half_life_events=2.0)
    rng = np.random.default_rng(8)
    model.u_t = rng.normal(size=(2, 2)).astype(np.float32)
    model.v_t = rng.normal(size=(2, 2)).astype(np.float32)
    model.text_out_t = rng.normal(size=(4, 2)).astype(np.float32)
    return model


def test_query_and_index_coordinates_score_as_the_explicit_formula(tmp_path):
    model = _with_transition(0.7)
    state = ProfileState.empty((math.inf,), 4)
    # Item 2, then an item the model has no row for, then item 1 (newest): positions count
    # among the items with rows, so item 2 is one place back.
    for t, item, w in ((0.0, 2, 2.0), (1.0, 99, 1.0), (2.0, 1, 1.0)):
        state.apply(np.zeros(4, np.float32), w, t, item, buffer_size=5)
    query = model.encode([state], now=2.0)[0]
    assert query.shape == (3 + 2,)
    raw = np.random.default_rng(9).normal(size=(3, 4)).astype(np.float32)
    items = model.item_vectors(np.array([1, 2, 50]), raw)
    b_t = model.u_t.astype(np.float64) @ model.v_t.T
    history = np.array([1.0, 2.0 * 2 ** (-1 / 2)])  # item 1 newest, item 2 one place back
    linear = (model.u[0] + 2.0 * model.u[1]) @ model.v.T  # no time decay in small_model
    transition = 0.7 * history @ b_t
    np.testing.assert_allclose(items[:2] @ query, linear + transition, rtol=1e-5)
    # An item the model has not seen: V and V_T from the text maps.
    unseen = (model.u[0] + 2.0 * model.u[1]) @ (raw[2] @ model.text_out) + 0.7 * (
        history @ model.u_t
    ) @ (raw[2] @ model.text_out_t)
    np.testing.assert_allclose(items[2] @ query, unseen, rtol=1e-5)

    checksum = model.save(tmp_path / "m.npz")
    loaded = load_model(tmp_path / "m.npz", checksum)
    np.testing.assert_array_equal(loaded.u_t, model.u_t)
    np.testing.assert_allclose(loaded.encode([state], now=2.0)[0], query)


def test_transition_weight_zero_leaves_the_model_as_it_was():
    model = _with_transition(0.0)
    state = ProfileState.empty((math.inf,), 4)
    state.apply(np.zeros(4, np.float32), 1.0, 0.0, 1, buffer_size=5)
    assert model.dim == 3
    np.testing.assert_allclose(model.encode([state], now=0.0)[0], model.u[0], rtol=1e-6)


N_RING = 40


def _ring_data(latest_go_forward: bool) -> TrainingData:
    """Items on a ring; every user walks forward from a random start for 8 steps, then their
    latest 3 events go on forward, or jump back before the start. A symmetric item-item model
    cannot tell the two directions apart; the transition term learns 'forward' from the walks."""
    rng = np.random.default_rng(11)
    rows = []
    for _ in range(120):
        start = int(rng.integers(N_RING))
        walk = [(start + k) % N_RING for k in range(8)]
        latest = [(start + 8 + k) % N_RING for k in range(3)]
        if not latest_go_forward:
            latest = [(start - 1 - k) % N_RING for k in range(3)]
        rows.append(np.array(walk + latest, dtype=np.int64))
    histories = Histories(rows, [np.arange(11.0) for _ in rows], [np.ones(11) for _ in rows])
    text = rng.normal(size=(N_RING, 8)).astype(np.float32)
    ids = np.arange(N_RING, dtype=np.int64) + 100
    return TrainingData(ids, text, ids, text, histories)


@pytest.mark.parametrize("forward", [True, False])
def test_train_keeps_the_transition_term_only_when_validation_improves(forward):
    config = TrainConfig(
        rank=64,
        transition_half_life_grid_events=(1.0, 4.0),
        transition_l2_grid=(1.0, 10.0),
        transition_weight_grid=(0.0, 0.5, 2.0),
    )
    validation = ValidationSet.build(_ring_data(forward), config, buffer_size=50)
    choice, metrics = choose_transition(
        validation, l2=10.0, half_life=math.inf, config=config, progress=False
    )
    # Without the term it scores what the linear part scored when it was chosen.
    linear = dataclasses.replace(config, l2_grid=(10.0,), half_life_grid_s=(math.inf,))
    _, _, chosen = choose_linear_settings(validation, linear, progress=False)
    assert metrics["transition_validation_ndcg@10_without"] == chosen["validation_ndcg@10"]
    if forward:
        assert choice.weight > 0
        assert (
            metrics["transition_validation_ndcg@10"]
            > metrics["transition_validation_ndcg@10_without"]
        )
        # The later choices see the term: the content weight's validation includes it.
        _, content = choose_content_weight(
            validation, 10.0, math.inf, math.inf, config, transition=choice
        )
        assert content["content_grid"]["weight=0"] == pytest.approx(
            metrics["transition_validation_ndcg@10"], abs=1e-6
        )
    else:
        assert choice == TransitionChoice()
        assert (
            metrics["transition_validation_ndcg@10"]
            == metrics["transition_validation_ndcg@10_without"]
        )


def test_fitted_model_serves_the_transition_term_it_chose():
    data = _ring_data(latest_go_forward=True)
    config = TrainConfig(rank=64)
    choice = TransitionChoice(weight=1.0, half_life_events=1.0, l2=1.0)
    model = fit_linear(data, 10.0, math.inf, config, buffer_size=50, transition=choice)
    assert model.transition_dim > 0
    state = ProfileState.empty((math.inf,), 8)
    for t, item in enumerate((100, 101, 102)):
        state.apply(np.zeros(8, np.float32), 1.0, float(t), item, buffer_size=50)
    scores = model.item_vectors(data.all_ids, data.all_text) @ model.encode([state], now=2.0)[0]
    scores[:3] = -np.inf
    # After 0, 1, 2 on the ring comes 3, not the symmetric neighbour 39.
    assert int(np.argmax(scores)) == 3
