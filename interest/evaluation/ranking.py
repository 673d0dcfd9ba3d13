"""Turn scores into ranks of the held-out targets and top-k lists (history excluded).

Ties in score are not wins: every item scoring the same as the target ranks ahead of it (the
convention of the harness behind shared/EVALUATION.md; popularity has many ties and reproduces
its 0.0410 / 0.0189 only this way). Top-k lists (used for coverage) fill ties by catalogue
position, lower item id first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from interest.evaluation.baselines import Model, history_rows
from interest.evaluation.split import Cases


@dataclass
class Ranked:
    """Per case: the target's 1-based rank (inf when not ranked) and the top-k item codes."""

    ranks: np.ndarray
    top: list[np.ndarray]


def top_k(row: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` largest finite scores, ties to the lower position."""
    finite = np.isfinite(row)
    k = min(k, int(finite.sum()))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    kth = np.partition(row, len(row) - k)[len(row) - k]  # the k-th largest value
    candidates = np.flatnonzero(row >= kth)
    order = np.lexsort((candidates, -row[candidates]))
    return candidates[order][:k]


def target_rank(row: np.ndarray, target: int) -> float:
    """1-based rank of ``target`` in ``row``, tied items ahead of it; inf if excluded."""
    score = row[target]
    if not np.isfinite(score):
        return float("inf")
    return float(np.count_nonzero(row >= score))


def rank_cases(
    model: Model,
    cases: Cases,
    n_items: int,
    *,
    half_life_days: float,
    k: int = 10,
    batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
) -> Ranked:
    """Score every case from its history rows, exclude the history, rank the whole catalogue."""
    ranks = np.empty(len(cases), dtype=np.float64)
    top: list[np.ndarray] = []
    for start in range(0, len(cases), batch_size):
        stop = min(len(cases), start + batch_size)
        histories = cases.histories[start:stop]
        rows = history_rows(histories, cases.history_times[start:stop], n_items, half_life_days)
        scores = np.array(model.score(rows), dtype=np.float64, copy=True)
        for r, history in enumerate(histories):
            row = scores[r]
            row[history] = -np.inf
            ranks[start + r] = target_rank(row, int(cases.targets[start + r]))
            top.append(top_k(row, k))
        if progress is not None:
            progress(stop - start)
    return Ranked(ranks, top)
