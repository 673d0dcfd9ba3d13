"""The linear item-to-item part of the interest model: EASE (Steck 2019), factorised.

EASE learns item-item weights ``B`` with a zero diagonal from the Gram matrix of the
interaction matrix, ``B = I - P diag(1/diag(P))`` with ``P = (X^T X + lambda I)^-1``. A user's
scores are ``x_u B`` where ``x_u`` holds recency weights of the items in their recent history.
To serve it through an inner-product index, ``B`` is written exactly as ``U V^T`` from the
eigendecomposition of the Gram matrix (see `EaseSpectrum`): the query is the decayed blend
``sum_j w_j U_j`` of the recent items' input vectors, and each item's index vector is ``V_i``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

log = logging.getLogger(__name__)

LN2 = math.log(2.0)


@dataclass(frozen=True)
class Histories:
    """Per-user recent histories as catalogue rows, times (epoch s) and event weights."""

    rows: list[np.ndarray]
    times: list[np.ndarray]
    weights: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.rows)


def only_items(histories: Histories, keep: np.ndarray) -> Histories:
    """The same histories without the events on items where ``keep`` (per row) is false."""
    masks = [keep[rows] for rows in histories.rows]
    return Histories(
        [r[m] for r, m in zip(histories.rows, masks, strict=True)],
        [t[m] for t, m in zip(histories.times, masks, strict=True)],
        [w[m] for w, m in zip(histories.weights, masks, strict=True)],
    )


def interaction_matrix(histories: Histories, n_items: int) -> sp.csr_matrix:
    """Binary user x item matrix (an item counts once per user)."""
    indptr = np.zeros(len(histories) + 1, dtype=np.int64)
    indices = []
    for u, rows in enumerate(histories.rows):
        unique = np.unique(rows)
        indices.append(unique)
        indptr[u + 1] = indptr[u] + len(unique)
    data = np.ones(int(indptr[-1]), dtype=np.float32)
    cat = np.concatenate(indices) if indices else np.zeros(0, dtype=np.int64)
    return sp.csr_matrix((data, cat, indptr), shape=(len(histories), n_items))


def gram_eigenpairs(
    x: sp.csr_matrix, *, max_exact: int = 8_000, rank: int = 512, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Eigenpairs ``(s, Y)`` of ``X^T X`` with non-negligible eigenvalues, largest first: exact
    from the smaller of ``X^T X`` and ``X X^T``, or the leading ``rank + 64`` by randomised
    subspace iteration when both sides exceed ``max_exact``."""
    n_users, n_items = x.shape
    x = x.astype(np.float64)
    if min(n_users, n_items) > max_exact:
        s, y = _top_eigenpairs(x, rank + 64, seed)
    elif n_items <= n_users:
        s, y = np.linalg.eigh((x.T @ x).toarray())
    else:
        s, w = np.linalg.eigh((x @ x.T).toarray())
        keep = s > 1e-9 * max(float(s.max(initial=0.0)), 1.0)
        s, w = s[keep], w[:, keep]
        y = np.asarray(x.T @ w) / np.sqrt(s)[None, :]
    order = np.argsort(-s)
    keep = order[s[order] > 1e-9 * max(float(s.max(initial=0.0)), 1.0)]
    return s[keep], np.ascontiguousarray(y[:, keep])


class EaseSpectrum:
    """EASE for any ``lambda`` from one eigendecomposition, in exactly factorised form.

    With the eigenpairs ``(Y, s)`` of the Gram matrix ``G = X^T X`` (taken from the smaller of
    ``X^T X`` and ``X X^T``), ``P = (G + lambda I)^-1 = I / lambda + Y C Y^T`` with
    ``C = diag(1 / (s + lambda) - 1 / lambda)``. Off the diagonal, EASE's
    ``B = I - P diag(1 / diag P)`` is then ``U V^T`` with ``U = -Y C`` and ``V = Y / diag(P)``;
    the diagonal only scores items already in the history, which rankings exclude. Keeping the
    ``rank`` components with the largest eigenvalues (the largest ``|C|``) gives the factors the
    index serves; with fewer users than ``rank`` nothing is dropped.
    """

    def __init__(
        self, x: sp.csr_matrix, *, max_exact: int = 8_000, rank: int = 512, seed: int = 0
    ) -> None:
        s, y = gram_eigenpairs(x, max_exact=max_exact, rank=rank, seed=seed)
        self.eigenvalues = s
        self.vectors = y

    def factors(self, lam: float, rank: int) -> tuple[np.ndarray, np.ndarray]:
        """``(U, V)`` with ``U V^T`` equal to EASE's ``B`` off the diagonal (up to ``rank``)."""
        c = 1.0 / (self.eigenvalues + lam) - 1.0 / lam
        p_diag = 1.0 / lam + (self.vectors**2) @ c
        top = slice(0, min(rank, len(c)))
        u = -self.vectors[:, top] * c[None, top]
        v = self.vectors[:, top] / p_diag[:, None]
        return u.astype(np.float32), v.astype(np.float32)


class TransitionSpectrum:
    """A SLIT-style transition model (Choi et al., WWW 2021) for any ``lambda``, factorised.

    Each row of ``S`` is a user's history before one of their events, as a profile buffer holds
    it (the latest ``buffer_size`` events, weighted by `position_weights`), and the same row of
    ``T`` is that event's item, one-hot. The closed form ``B_T = (S^T S + lambda I)^-1 S^T T``
    maps what came before to what comes next; it is not symmetric, unlike EASE. With the
    eigenpairs ``(E, s)`` of ``S^T S`` (`gram_eigenpairs`), ``S^T T`` lies in the span of ``E``,
    so ``B_T = E diag(1 / (s + lambda)) E^T S^T T`` exactly, which is ``U_T V_T^T`` with
    ``U_T = E D`` and ``V_T = T^T S E D``, ``D = diag(1 / sqrt(s + lambda))`` (split evenly so
    neither side's scale runs away). Keeping the ``rank`` largest eigenvalues gives the factors
    served; when both sides of ``S`` exceed ``max_exact`` only the leading ``rank + 64`` are
    computed (randomised), and the factors are the regression on those principal directions.
    """

    def __init__(
        self,
        histories: Histories,
        n_items: int,
        *,
        buffer_size: int,
        half_life_events: float,
        max_exact: int = 8_000,
        rank: int = 512,
        seed: int = 0,
    ) -> None:
        s_matrix, targets = transition_rows(histories, n_items, buffer_size, half_life_events)
        eigenvalues, vectors = gram_eigenpairs(s_matrix, max_exact=max_exact, rank=rank, seed=seed)
        self.eigenvalues, self.vectors = eigenvalues[:rank], vectors[:, :rank]
        # T^T S (items x items, sparse: how often each item came right after each weighted
        # history item) before E, so that no dense prefixes x rank matrix is ever formed.
        one_hot = sp.csr_matrix(
            (np.ones(len(targets)), (np.arange(len(targets)), targets)),
            shape=(len(targets), n_items),
        )
        self.outputs = np.asarray((one_hot.T @ s_matrix) @ self.vectors)

    def factors(self, lam: float, rank: int) -> tuple[np.ndarray, np.ndarray]:
        """``(U_T, V_T)`` with ``U_T V_T^T = B_T`` (up to ``rank`` components)."""
        top = slice(0, min(rank, len(self.eigenvalues)))
        d = 1.0 / np.sqrt(self.eigenvalues[top] + lam)
        u = self.vectors[:, top] * d[None, :]
        v = self.outputs[:, top] * d[None, :]
        return u.astype(np.float32), v.astype(np.float32)


def position_weights(n: int, half_life_events: float) -> np.ndarray:
    """``2^(-k / half_life)`` for the event ``k`` places before the newest, newest last (the
    order buffers keep)."""
    if math.isinf(half_life_events):
        return np.ones(n)
    return np.exp(-LN2 * np.arange(n - 1, -1, -1, dtype=np.float64) / half_life_events)


def transition_window(buffer_size: int, half_life_events: float) -> int:
    """How many recent events a transition row holds: the buffer, less what decays below 1e-6."""
    if math.isinf(half_life_events):
        return buffer_size
    return max(1, min(buffer_size, math.ceil(half_life_events * math.log2(1e6)) + 1))


def transition_rows(
    histories: Histories, n_items: int, buffer_size: int, half_life_events: float
) -> tuple[sp.csr_matrix, np.ndarray]:
    """``(S, targets)``: per event with an earlier one, the position-weighted events before it
    and the event's item.

    Events count once whatever their weight, as in EASE's interaction matrix; the served query
    weighs them by their weights, as EASE's does, so both parts' scores scale alike with the
    event weights and the transition term's weight does not depend on them.
    """
    window = transition_window(buffer_size, half_life_events)
    decay = position_weights(window, half_life_events)[::-1]  # by distance, 0 = newest
    prefix_rows, item_cols, values, targets = [], [], [], []
    offset = 0
    for rows in histories.rows:
        m = len(rows)
        if m < 2:
            continue
        steps = np.arange(1, m)  # each event with a predecessor
        targets.append(rows[1:])
        for k in range(min(window, m - 1)):
            t = steps[steps - 1 - k >= 0]
            prefix_rows.append(offset + t - 1)
            item_cols.append(rows[t - 1 - k])
            values.append(np.full(len(t), decay[k]))
        offset += m - 1
    if offset == 0:
        return sp.csr_matrix((0, n_items)), np.zeros(0, dtype=np.int64)
    s_matrix = sp.coo_matrix(
        (np.concatenate(values), (np.concatenate(prefix_rows), np.concatenate(item_cols))),
        shape=(offset, n_items),
    ).tocsr()  # repeated items in a window add up
    return s_matrix, np.concatenate(targets)


def transition_query_rows(
    histories: Histories, n_items: int, half_life_events: float
) -> np.ndarray:
    """Dense histories x items matrix of position-weighted histories (newest last), as the
    served query weighs a buffer."""
    out = np.zeros((len(histories), n_items), dtype=np.float64)
    for u, (rows, weights) in enumerate(zip(histories.rows, histories.weights, strict=True)):
        np.add.at(out[u], rows, weights * position_weights(len(rows), half_life_events))
    return out


def _top_eigenpairs(x: sp.csr_matrix, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Leading eigenpairs of ``X^T X`` by randomised subspace iteration (large catalogues)."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((x.shape[1], k))
    for _ in range(4):
        basis, _ = np.linalg.qr(np.asarray(x.T @ (x @ basis)))
    small = basis.T @ np.asarray(x.T @ (x @ basis))
    s, w = np.linalg.eigh(small)
    return s, basis @ w


def recency_weights(
    times: np.ndarray, weights: np.ndarray, t_ref: float, half_life_s: float
) -> np.ndarray:
    if math.isinf(half_life_s):
        return weights.astype(np.float64)
    return weights * np.exp(-LN2 * (t_ref - times) / half_life_s)


def history_rows(
    histories: Histories, n_items: int, half_life_s: float, t_refs: Sequence[float] | None = None
) -> np.ndarray:
    """Dense users x items matrix of recency-weighted histories (the latest event is t_ref)."""
    out = np.zeros((len(histories), n_items), dtype=np.float64)
    for u, (rows, times, weights) in enumerate(
        zip(histories.rows, histories.times, histories.weights, strict=True)
    ):
        if len(rows) == 0:
            continue
        t_ref = times.max() if t_refs is None else t_refs[u]
        np.add.at(out[u], rows, recency_weights(times, weights, t_ref, half_life_s))
    return out


def text_map(text: np.ndarray, targets: np.ndarray, ridge: float = 1.0) -> np.ndarray:
    """Ridge regression from raw text vectors to factor rows, for items with no events."""
    a = text.T.astype(np.float64) @ text + ridge * np.eye(text.shape[1])
    return np.linalg.solve(a, text.T.astype(np.float64) @ targets).astype(np.float32)
