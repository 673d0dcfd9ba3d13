"""Learned recency weights as the server applies them (numpy only: no torch when serving)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LN2 = math.log(2.0)
GAP_BUCKETS = 32


def gap_buckets(age_s: np.ndarray) -> np.ndarray:
    """0 for events in the newest second, then 1 + floor(log2(seconds)), capped."""
    age = np.maximum(np.asarray(age_s, dtype=np.float64), 0.0)
    buckets = np.where(age < 1.0, 0, 1 + np.floor(np.log2(np.maximum(age, 1.0))))
    return np.minimum(buckets, GAP_BUCKETS - 1).astype(np.int64)


@dataclass(frozen=True)
class CorrectionWeights:
    """What serving needs: per-position and per-age logits, and the popularity coefficient."""

    position: np.ndarray  # (buffer_size,)
    gap: np.ndarray  # (GAP_BUCKETS,)
    popularity_scale: float

    def event_weights(self, ages_s: np.ndarray) -> np.ndarray:
        """Weights of a buffer's events given their ages, newest last (as stored)."""
        n = len(ages_s)
        positions = np.arange(n)[::-1]  # 0 = newest
        logits = self.position[np.minimum(positions, len(self.position) - 1)]
        logits = logits + self.gap[gap_buckets(ages_s)]
        return np.logaddexp(0.0, logits)  # softplus
