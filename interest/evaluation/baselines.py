"""ID-only baselines on the training interactions: popularity, item-kNN and EASE.

Each model scores a batch of users from their history rows (``history_rows``: one weight per
catalogue item, recency-weighted or binary); ranking and metrics are shared (`ranking`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import scipy.sparse as sp

from interest.evaluation.split import Interactions

DAY = 86_400.0
#: EASE needs a dense matrix of min(users, items) squared; beyond this it is skipped.
EASE_MAX_DIM = 20_000


class Model(Protocol):
    def score(self, rows: np.ndarray) -> np.ndarray:
        """(batch, n_items) scores from (batch, n_items) history rows."""
        ...


def history_rows(
    histories: Sequence[np.ndarray],
    history_times: Sequence[np.ndarray],
    n_items: int,
    half_life_days: float = math.inf,
) -> np.ndarray:
    """Dense history rows: weight exp(-ln2 (t_last - t) / half-life), the largest per item.

    An infinite half-life gives the binary row.
    """
    rows = np.zeros((len(histories), n_items), dtype=np.float64)
    for r, (items, times) in enumerate(zip(histories, history_times, strict=True)):
        if not len(items):
            continue
        if math.isinf(half_life_days):
            rows[r, items] = 1.0
        else:
            weights = np.exp(-math.log(2.0) * (times[-1] - times) / (half_life_days * DAY))
            np.maximum.at(rows[r], items, weights)
    return rows


def interaction_matrix(train: Interactions, n_items: int) -> sp.csr_matrix:
    """Binary (training users x items) matrix; users without training data have no row."""
    users, codes = np.unique(train.users, return_inverse=True)
    matrix = sp.csr_matrix((np.ones(len(train)), (codes, train.items)), shape=(len(users), n_items))
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


class Popularity:
    """Interaction counts over the training data (the same list for every user)."""

    def __init__(self, train: Interactions, n_items: int) -> None:
        self.counts = np.bincount(train.items, minlength=n_items).astype(np.float64)

    def score(self, rows: np.ndarray) -> np.ndarray:
        return np.tile(self.counts, (rows.shape[0], 1))


class ItemKNN:
    """Item-item cosine similarity of co-occurrence, summed over the (weighted) history.

    score_j = sum_i r_i * C_ij / sqrt(n_i n_j), computed as ((r / sqrt(n)) X^T) X / sqrt(n_j)
    without forming the item-item matrix. The self-similarity term only touches history items,
    which are excluded from the ranking anyway.
    """

    def __init__(self, train: Interactions, n_items: int) -> None:
        self.x = interaction_matrix(train, n_items)
        counts = np.asarray(self.x.sum(axis=0)).ravel()
        self.inv_sqrt = np.divide(1.0, np.sqrt(counts), out=np.zeros(n_items), where=counts > 0)

    def score(self, rows: np.ndarray) -> np.ndarray:
        users = self.x @ (rows * self.inv_sqrt).T  # (train users, batch)
        return np.asarray(self.x.T @ users).T * self.inv_sqrt


class Ease:
    """EASE (Steck 2019): B = I - P diag(1/diag(P)), P = (X^T X + lambda I)^-1, diag(B) = 0.

    When there are fewer users than items, P comes from the Woodbury identity
    P = (I - X^T (X X^T + lambda I)^-1 X) / lambda, so only a users x users matrix is inverted.
    Scores are r B = r - (r P) / diag(P), never forming B.
    """

    def __init__(self, train: Interactions, n_items: int, lam: float) -> None:
        x = interaction_matrix(train, n_items)
        self.lam = float(lam)
        n_users = x.shape[0]
        if min(n_users, n_items) > EASE_MAX_DIM:
            raise ValueError(f"EASE needs a {min(n_users, n_items)}^2 dense matrix: too large")
        self.dual = n_users < n_items
        if self.dual:
            self.x = x
            gram = (x @ x.T).toarray()
            gram[np.diag_indices_from(gram)] += self.lam
            self.kx = np.linalg.solve(gram, x.toarray())  # (X X^T + lambda I)^-1 X
            self.p_diag = (1.0 - np.asarray(x.multiply(self.kx).sum(axis=0)).ravel()) / self.lam
        else:
            gram = (x.T @ x).toarray()
            gram[np.diag_indices_from(gram)] += self.lam
            self.p = np.linalg.inv(gram)
            self.p_diag = np.diag(self.p).copy()

    def score(self, rows: np.ndarray) -> np.ndarray:
        if self.dual:
            rp = (rows - np.asarray(self.x @ rows.T).T @ self.kx) / self.lam
        else:
            rp = rows @ self.p
        return rows - rp / self.p_diag
