"""The seam between profiles and retrieval: a query encoder maps profiles to query vectors.

`PlainBlend` (no trained model) uses one normalised decayed accumulator as the query and the raw
item vectors as the index. A trained correction network (`interest.model`) implements the same
protocol and may also transform the item side, which is why the index records the model version
it was built for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from interest.profile import ProfileState, closest_slot


class QueryEncoder(Protocol):
    #: Model version the encoder belongs to; ``None`` for the plain blend.
    version_id: int | None

    def encode(self, states: Sequence[ProfileState], now: float) -> np.ndarray:
        """Return float32 query vectors, one row per profile, in the index's space."""
        ...

    def item_vectors(self, item_ids: np.ndarray, raw: np.ndarray) -> np.ndarray:
        """Map raw embedder vectors of items (rows) to the index's space."""
        ...

    def missing_text_vectors(self, state: ProfileState) -> list[int]:
        """Ids of buffered items whose raw vectors `encode` would use but ``state`` lacks."""
        ...


def normalise(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return (rows / np.maximum(norms, 1e-12)).astype(np.float32)


class PlainBlend:
    """Query = the normalised accumulator whose half-life is closest to ``half_life``."""

    version_id: int | None = None

    def __init__(self, half_life: float) -> None:
        self.half_life = half_life

    def encode(self, states: Sequence[ProfileState], now: float) -> np.ndarray:
        if not states:
            return np.zeros((0, 0), dtype=np.float32)
        rows = np.stack(
            [s.accumulators[closest_slot(s.half_lives, self.half_life)] for s in states]
        )
        return normalise(rows)

    def item_vectors(self, item_ids: np.ndarray, raw: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(raw, dtype=np.float32)

    def missing_text_vectors(self, state: ProfileState) -> list[int]:
        return []  # the accumulators already hold every event's vector
