"""Helpers shared by the interest tests."""

import math

import numpy as np

from interest.model import InterestModel, LinearConfig


def small_model(seed: int = 3, half_life_s: float = math.inf, **config: float) -> InterestModel:
    """Two known items (ids 1, 2), rank 3, text dimension 4 with a zero text map, v_scale 2."""
    rng = np.random.default_rng(seed)
    u, v = rng.normal(size=(2, 3)).astype(np.float32), rng.normal(size=(2, 3)).astype(np.float32)
    return InterestModel(
        config=LinearConfig(
            l2=1.0, half_life_s=half_life_s, rank=3, buffer_size=5, v_scale=2.0, **config
        ),
        item_ids=np.array([1, 2]),
        u=u,
        v=v,
        text_in=np.zeros((4, 3), np.float32),
        text_out=np.zeros((4, 3), np.float32),
        metrics={},
    )
