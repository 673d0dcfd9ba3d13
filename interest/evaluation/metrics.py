"""Ranking metrics, one small function each, over 1-based ranks of single held-out targets.

A rank is ``inf`` when the target is not in the ranked list at all (outside the retrieved top, or
excluded as already seen). With one target per case, HR@k equals recall@k.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def hits(ranks: np.ndarray, k: int) -> np.ndarray:
    """1.0 where the target is in the top ``k``, else 0.0 (per case)."""
    return (np.asarray(ranks, dtype=np.float64) <= k).astype(np.float64)


def ndcg_gains(ranks: np.ndarray, k: int) -> np.ndarray:
    """1 / log2(rank + 1) for a hit at rank 1..k, else 0 (per case; the ideal DCG is 1)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    gains = np.zeros(len(ranks), dtype=np.float64)
    hit = ranks <= k
    gains[hit] = 1.0 / np.log2(ranks[hit] + 1.0)
    return gains


def hit_rate(ranks: np.ndarray, k: int) -> float:
    """HR@k: the fraction of cases whose target is in the top ``k``."""
    return float(hits(ranks, k).mean()) if len(ranks) else 0.0


def recall(ranks: np.ndarray, k: int) -> float:
    """Recall@k with one relevant item per case (the same number as HR@k)."""
    return hit_rate(ranks, k)


def ndcg(ranks: np.ndarray, k: int) -> float:
    """NDCG@k averaged over cases."""
    return float(ndcg_gains(ranks, k).mean()) if len(ranks) else 0.0


def coverage(top_lists: Iterable[Iterable[int]], n_items: int) -> float:
    """Fraction of the catalogue that appears in at least one of the lists."""
    if n_items <= 0:
        return 0.0
    shown: set[int] = set()
    for items in top_lists:
        shown.update(int(i) for i in items)
    return len(shown) / n_items


def bootstrap_ci(
    values: np.ndarray, *, n_resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (resampling cases)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return (0.0, 0.0)
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples, dtype=np.float64)
    chunk = max(1, 2_000_000 // len(values))  # bound the memory of one resampling block
    for start in range(0, n_resamples, chunk):
        stop = min(n_resamples, start + chunk)
        picks = rng.integers(0, len(values), size=(stop - start, len(values)))
        means[start:stop] = values[picks].mean(axis=1)
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(means, [tail, 100.0 - tail])
    return (float(lo), float(hi))
