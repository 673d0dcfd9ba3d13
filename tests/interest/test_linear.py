"""The factorised EASE equals the textbook EASE off the diagonal, and the model serves it."""

import math

import numpy as np
import pytest

from interest.errors import ModelCorrupt
from interest.linear import EaseSpectrum, Histories, interaction_matrix
from interest.model import InterestModel, LinearConfig, load_model
from interest.profile import ProfileState
from tests.interest.conftest import small_model


def _histories(n_users: int, n_items: int, seed: int = 0) -> Histories:
    rng = np.random.default_rng(seed)
    rows = [rng.choice(n_items, size=rng.integers(2, 8), replace=False) for _ in range(n_users)]
    return Histories(
        rows, [np.arange(len(r), dtype=float) for r in rows], [np.ones(len(r)) for r in rows]
    )


def _textbook_ease(x: np.ndarray, lam: float) -> np.ndarray:
    p = np.linalg.inv(x.T @ x + lam * np.eye(x.shape[1]))
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    return b


@pytest.mark.parametrize(("n_users", "n_items"), [(12, 30), (40, 15)])  # dual and primal forms
@pytest.mark.parametrize("lam", [0.5, 10.0])
def test_factors_reproduce_ease_off_the_diagonal(n_users, n_items, lam):
    histories = _histories(n_users, n_items)
    x = interaction_matrix(histories, n_items)
    u, v = EaseSpectrum(x).factors(lam, rank=1000)
    expected = _textbook_ease(x.toarray(), lam)
    product = u.astype(np.float64) @ v.T
    off = ~np.eye(n_items, dtype=bool)
    np.testing.assert_allclose(product[off], expected[off], atol=1e-5)


def test_model_query_is_the_decayed_blend_of_recent_input_vectors(tmp_path):
    rng = np.random.default_rng(1)
    u, v = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(4, 3)).astype(np.float32)
    model = InterestModel(
        config=LinearConfig(l2=1.0, half_life_s=10.0, rank=3, buffer_size=2),
        item_ids=np.array([100, 101, 102, 103]),
        u=u,
        v=v,
        text_in=np.zeros((5, 3), np.float32),
        text_out=np.ones((5, 3), np.float32),
        metrics={},
    )
    state = ProfileState.empty((math.inf,), 5)
    for t, item in ((0.0, 100), (90.0, 101), (100.0, 102)):
        state.apply(np.zeros(5, np.float32), 2.0, t, item, buffer_size=5)
    # Only the last two events count; the older one is 10 s (one half-life) older.
    expected = 2.0 * (0.5 * u[1] + u[2])
    np.testing.assert_allclose(model.encode([state], now=100.0)[0], expected, rtol=1e-6)
    # Known items get their learned vector; unknown ones the text map.
    raw = np.ones((2, 5), np.float32)
    vectors = model.item_vectors(np.array([103, 999]), raw)
    np.testing.assert_allclose(vectors[0], v[3])
    np.testing.assert_allclose(vectors[1], np.full(3, 5.0))

    checksum = model.save(tmp_path / "m.npz")
    loaded = load_model(tmp_path / "m.npz", checksum)
    np.testing.assert_array_equal(loaded.u, u)
    assert loaded.config == model.config

    # A file that is not what was recorded (one byte changed, cut short, gone) is refused.
    data = (tmp_path / "m.npz").read_bytes()
    middle = len(data) // 2
    for broken in (data[:middle] + bytes([data[middle] ^ 1]) + data[middle + 1 :], data[:-1]):
        (tmp_path / "m.npz").write_bytes(broken)
        with pytest.raises(ModelCorrupt, match="does not match its recorded checksum"):
            load_model(tmp_path / "m.npz", checksum)
    (tmp_path / "m.npz").unlink()
    with pytest.raises(ModelCorrupt, match="cannot read model file"):
        load_model(tmp_path / "m.npz", checksum)


def test_correction_starts_from_the_chosen_exponential_curve():
    from interest.correction import DecayCorrection

    half_life = 600.0
    weights = DecayCorrection(buffer_size=50, half_life_s=half_life).export()
    ages = np.array([0.0, 1.0, 64.0, 1024.0])  # bucket lower bounds: 2^(b-1) seconds
    expected = np.exp(-math.log(2) * ages / half_life)
    np.testing.assert_allclose(weights.event_weights(ages)[::-1] / 1.0, expected[::-1], rtol=1e-4)


def test_model_with_correction_folds_the_popularity_bias_into_the_inner_product():
    from interest.recency import GAP_BUCKETS, CorrectionWeights

    rng = np.random.default_rng(2)
    u, v = rng.normal(size=(3, 2)).astype(np.float32), rng.normal(size=(3, 2)).astype(np.float32)
    correction = CorrectionWeights(
        position=np.zeros(4), gap=np.zeros(GAP_BUCKETS), popularity_scale=0.5
    )
    model = InterestModel(
        config=LinearConfig(l2=1.0, half_life_s=math.inf, rank=2, buffer_size=4),
        item_ids=np.array([1, 2, 3]),
        u=u,
        v=v,
        text_in=np.zeros((4, 2), np.float32),
        text_out=np.zeros((4, 2), np.float32),
        metrics={},
        correction=correction,
        log_popularity=np.log1p(np.array([0.0, 3.0, 7.0])),
    )
    state = ProfileState.empty((math.inf,), 4)
    state.apply(np.zeros(4, np.float32), 1.0, 10.0, 1, buffer_size=5)
    query = model.encode([state], now=10.0)[0]
    items = model.item_vectors(np.array([1, 2, 3]), np.zeros((3, 4), np.float32))
    softplus0 = math.log(2.0)
    expected = softplus0 * (u[0] @ v.T) + 0.5 * np.log1p([0.0, 3.0, 7.0])
    np.testing.assert_allclose(items @ query, expected, rtol=1e-5)


def test_content_term_lets_a_brand_new_item_score_from_its_text():
    model = small_model(content_weight=0.5, content_half_life_s=math.inf)
    u = model.u
    text = np.eye(4, dtype=np.float32)
    state = ProfileState.empty((3600.0, math.inf), 4)
    state.apply(text[0], 1.0, 0.0, 1, buffer_size=5)
    query = model.encode([state], now=0.0)[0]
    assert query.shape == (3 + 4,)
    new_items = model.item_vectors(np.array([99, 98]), text[[0, 1]])
    linear_norm = float(np.linalg.norm(u[0]))
    # The unseen item with the profile's text scores by content alone: 0.5 * |q| * 2 * cos = |q|.
    np.testing.assert_allclose(new_items @ query, [linear_norm, 0.0], rtol=1e-5)
