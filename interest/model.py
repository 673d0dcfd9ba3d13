"""The trained interest model as the server uses it: a query encoder plus an item side.

Query (for a profile): the decayed blend of the input vectors of the profile's recent items,
``q = sum_j w_j 2^(-(t_ref - t_j) / half_life) U_j`` — O(buffer x rank) at query time, no
history replay — optionally refined by the correction network (`interest.correction`), whose
output is appended to ``q``. Items: ``V_i`` (and the correction network's item vector and bias),
or for items the model has not seen, the same computed from their text vector.

A model is one ``.npz`` file written atomically; its sha256 is recorded in the database and
checked on load, so a half-written or altered file is never served.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from interest.errors import ModelCorrupt
from interest.linear import LN2, position_weights
from interest.profile import ProfileState, closest_slot
from interest.recency import CorrectionWeights


@dataclass(frozen=True)
class LinearConfig:
    """Settings of the linear part, chosen on validation by `interest.train`.

    l2: EASE's regularisation strength lambda. half_life_s: recency half-life of the query
    blend (inf: no decay). rank: factorisation rank. buffer_size: how many recent events the
    query blends (the profile keeps at least this many).
    """

    l2: float
    half_life_s: float
    rank: int
    buffer_size: int
    #: Weight of the content term (0: none): the profile's decayed sum of raw text vectors at
    #: ``content_half_life_s`` against each item's text vector, scaled to the linear scores.
    content_weight: float = 0.0
    content_half_life_s: float = math.inf
    #: Median norm of the index vectors ``V``: puts the content and cold terms on the linear
    #: scores' scale.
    v_scale: float = 1.0
    #: Weight of the cold term (0: none): items the model has no events for get a 1 in an extra
    #: index coordinate, and the query puts there the recency-weighted share of the profile's
    #: recent events that were on such items, scaled like the content term. Someone going
    #: through items nobody had touched at training time (new releases, the long tail) is likely
    #: to go on doing so, and only this term can tell: their ``V`` is only a text prediction.
    cold_weight: float = 0.0
    #: Weight of buffered events on items the model has no row for in the linear blend (0:
    #: they add nothing): such an item's input vector is its raw text vector through
    #: ``text_in``. The raw vectors come with the profile state (``ProfileState.text_vectors``).
    text_in_weight: float = 0.0
    #: Weight of the transition term (0: none; `interest.linear.TransitionSpectrum`): the query
    #: adds ``transition_weight * sum_k 2^(-k / transition_half_life_events) w_k U_T[item_k]``
    #: over the buffered events the model has rows for (k = 0 for the newest of them), the
    #: index ``V_T``, so an item scores by what tends to come next after the recent ones.
    transition_weight: float = 0.0
    transition_half_life_events: float = 1.0
    transition_l2: float = 0.0


@dataclass
class InterestModel:
    config: LinearConfig
    item_ids: np.ndarray  # (n,) int64 driftrec item ids, row order of the arrays below
    u: np.ndarray  # (n, r) input vectors
    v: np.ndarray  # (n, r) index vectors
    text_in: np.ndarray  # (dim, r) text vector -> input vector, for unseen items
    text_out: np.ndarray  # (dim, r) text vector -> index vector, for unseen items
    metrics: dict[str, Any]
    version_id: int | None = None
    #: The learned correction (recency weights and popularity coefficient), when it was kept.
    correction: CorrectionWeights | None = None
    log_popularity: np.ndarray | None = None  # (n,) log(1 + events) per item, with a correction
    #: The transition term's factors, when it was kept: input and index vectors per item, and
    #: the ridge map from text to index vectors for items the model has not seen.
    u_t: np.ndarray | None = None  # (n, r_T)
    v_t: np.ndarray | None = None  # (n, r_T)
    text_out_t: np.ndarray | None = None  # (dim, r_T)

    def __post_init__(self) -> None:
        self._row = {int(item_id): row for row, item_id in enumerate(self.item_ids)}

    @property
    def transition_dim(self) -> int:
        if self.config.transition_weight > 0 and self.v_t is not None:
            return int(self.v_t.shape[1])
        return 0

    @property
    def content_dim(self) -> int:
        return int(self.text_out.shape[0]) if self.config.content_weight > 0 else 0

    @property
    def cold_dim(self) -> int:
        return 1 if self.config.cold_weight > 0 else 0

    @property
    def dim(self) -> int:
        """Dimension of query and index vectors: ``V``, then ``V_T`` when the transition term is
        on, then the text vector when the content term is on, then the cold coordinate when
        that term is on, then one bias coordinate when the correction is kept."""
        bias = 1 if self.correction is not None else 0
        return int(self.v.shape[1]) + self.transition_dim + self.content_dim + self.cold_dim + bias

    def rows(self, item_ids: Sequence[int]) -> np.ndarray:
        return np.array([self._row.get(int(i), -1) for i in item_ids], dtype=np.int64)

    def missing_text_vectors(self, state: ProfileState) -> list[int]:
        """Catalogue ids in the blended window that the query would map through ``text_in``
        but whose raw vector ``state.text_vectors`` lacks: what the caller fetches (nothing
        when the text-in weight is off or every buffered item has a row)."""
        if self.config.text_in_weight <= 0:
            return []
        window = state.recent[-self.config.buffer_size :]
        return sorted(
            {
                item_id
                for _, item_id, _ in window
                if item_id >= 0 and item_id not in self._row and item_id not in state.text_vectors
            }
        )

    def _linear_query(
        self,
        recent: Sequence[tuple[float, int, float]],
        t_ref: float,
        text_vectors: Mapping[int, np.ndarray],
    ) -> tuple[np.ndarray, float]:
        """(query with the linear part filled in, float64; share of the recency weight that
        falls on items the model has no vectors for)."""
        rank = self.v.shape[1]
        q = np.zeros(self.dim, dtype=np.float64)
        window = recent[-self.config.buffer_size :]
        if self.correction is not None:
            q[-1] = 1.0  # picks up each item's bias
        if not window:
            return q, 0.0
        ids = [item_id for _, item_id, _ in window]
        rows = self.rows(ids)
        ages = t_ref - np.array([t for t, _, _ in window])
        weights = np.array([w for _, _, w in window])
        known = rows >= 0
        # Events on items without a row that enter the blend through their text vector.
        texted = ~known
        if self.config.text_in_weight > 0:
            texted &= np.array([item_id in text_vectors for item_id in ids])
        else:
            texted[:] = False
        blended = known | texted
        if self.correction is not None:
            weights = weights * self.correction.event_weights(ages)
            linear = weights
        elif not np.isinf(self.config.half_life_s):
            decay = np.exp(-LN2 * ages / self.config.half_life_s)
            # The ranking does not depend on the query's scale (the content and cold terms
            # scale with it), so the blended items' curve starts at the newest of them: with a
            # short half-life and newer events on unknown items, the plain curve underflows
            # to a zero query, which ranks nothing.
            # (Only blended events: a newer unblended one would overflow the curve.)
            newest = ages[blended].min() if blended.any() else 0.0
            linear = np.zeros_like(weights)
            linear[blended] = weights[blended] * np.exp(
                -LN2 * (ages[blended] - newest) / self.config.half_life_s
            )
            weights = weights * decay
        else:
            linear = weights
        q[:rank] += linear[known] @ self.u[rows[known]]
        if texted.any():
            raw = np.stack([text_vectors[ids[i]] for i in np.flatnonzero(texted)])
            q[:rank] += self.config.text_in_weight * (
                linear[texted] @ (raw.astype(np.float64) @ self.text_in)
            )
        total = float(weights.sum())
        cold_share = float(weights[~known].sum()) / total if total > 0 else 0.0
        return q, cold_share

    # -- QueryEncoder protocol ---------------------------------------------------------------
    def encode(self, states: Sequence[ProfileState], now: float) -> np.ndarray:
        rank = self.v.shape[1]
        queries = np.zeros((len(states), self.dim), dtype=np.float64)
        for row, state in enumerate(states):
            queries[row], cold_share = self._linear_query(
                state.recent, state.ref_time, state.text_vectors
            )
            # The content and cold terms are on the linear scores' scale; with no known item
            # in the buffer there are no linear scores, and any positive scale ranks the same.
            linear_norm = float(np.linalg.norm(queries[row, :rank])) or 1.0
            scale = linear_norm * self.config.v_scale
            start = rank
            if self.transition_dim:
                queries[row, start : start + self.transition_dim] = self._transition_query(
                    state.recent
                )
                start += self.transition_dim
            if self.content_dim:
                queries[row, start : start + self.content_dim] = (
                    self.config.content_weight * scale * self._content_direction(state)
                )
                start += self.content_dim
            if self.cold_dim:
                queries[row, start] = self.config.cold_weight * scale * cold_share
        return queries.astype(np.float32)

    def _transition_query(self, recent: Sequence[tuple[float, int, float]]) -> np.ndarray:
        """``w_T`` times the position-weighted blend of ``U_T`` over the buffered events the
        model has rows for, newest of them first in weight (as `interest.linear.
        transition_rows` weighs a training history)."""
        assert self.u_t is not None
        window = recent[-self.config.buffer_size :]
        rows = self.rows([item_id for _, item_id, _ in window])
        known = rows >= 0
        if not known.any():
            return np.zeros(self.u_t.shape[1])
        weights = np.array([w for _, _, w in window])[known] * position_weights(
            int(known.sum()), self.config.transition_half_life_events
        )
        return self.config.transition_weight * (weights @ self.u_t[rows[known]])

    def _content_direction(self, state: ProfileState) -> np.ndarray:
        """The unit direction of the profile's decayed text-vector sum at the content half-life."""
        vector = state.accumulators[closest_slot(state.half_lives, self.config.content_half_life_s)]
        norm = float(np.linalg.norm(vector))
        return vector / norm if norm > 0 else vector

    def item_vectors(self, item_ids: np.ndarray, raw: np.ndarray) -> np.ndarray:
        rows = self.rows(item_ids)
        known = rows >= 0
        out = np.asarray(raw, dtype=np.float32) @ self.text_out
        out[known] = self.v[rows[known]]
        if self.transition_dim:
            assert self.v_t is not None and self.text_out_t is not None
            transition = np.asarray(raw, dtype=np.float32) @ self.text_out_t
            transition[known] = self.v_t[rows[known]]
            out = np.hstack([out, transition])
        if self.content_dim:
            out = np.hstack([out, np.asarray(raw, dtype=np.float32)])
        if self.cold_dim:
            out = np.hstack([out, (~known).astype(np.float32)[:, None]])
        if self.correction is not None and self.log_popularity is not None:
            bias = np.zeros((len(rows), 1), dtype=np.float32)
            bias[known, 0] = self.correction.popularity_scale * self.log_popularity[rows[known]]
            out = np.hstack([out, bias])
        return np.ascontiguousarray(out, dtype=np.float32)

    # -- persistence ---------------------------------------------------------------------------
    def save(self, path: Path) -> str:
        """Write atomically (temporary file, fsync, rename); return the file's sha256."""
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.savez(
            buffer,
            config=np.array(json.dumps(asdict(self.config))),
            metrics=np.array(json.dumps(self.metrics)),
            item_ids=self.item_ids,
            u=self.u,
            v=self.v,
            text_in=self.text_in,
            text_out=self.text_out,
            **_correction_arrays(self.correction, self.log_popularity),
            **_transition_arrays(self),
        )
        data = buffer.getvalue()
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        return hashlib.sha256(data).hexdigest()


def _correction_arrays(
    correction: CorrectionWeights | None, log_popularity: np.ndarray | None
) -> dict[str, np.ndarray]:
    if correction is None or log_popularity is None:
        return {}
    return {
        "correction_position": correction.position,
        "correction_gap": correction.gap,
        "correction_popularity_scale": np.array(correction.popularity_scale),
        "log_popularity": log_popularity,
    }


def _transition_arrays(model: InterestModel) -> dict[str, np.ndarray]:
    if model.u_t is None or model.v_t is None or model.text_out_t is None:
        return {}
    return {"u_t": model.u_t, "v_t": model.v_t, "text_out_t": model.text_out_t}


def load_model(path: Path, checksum: str | None, version_id: int | None = None) -> InterestModel:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelCorrupt(f"cannot read model file {path}: {exc}") from exc
    if checksum is not None and hashlib.sha256(data).hexdigest() != checksum:
        raise ModelCorrupt(f"model file {path} does not match its recorded checksum")
    with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
        config = json.loads(str(arrays["config"]))
        return InterestModel(
            config=LinearConfig(**config),
            item_ids=arrays["item_ids"],
            u=arrays["u"],
            v=arrays["v"],
            text_in=arrays["text_in"],
            text_out=arrays["text_out"],
            metrics=json.loads(str(arrays["metrics"])),
            version_id=version_id,
            correction=CorrectionWeights(
                position=arrays["correction_position"],
                gap=arrays["correction_gap"],
                popularity_scale=float(arrays["correction_popularity_scale"]),
            )
            if "correction_position" in arrays
            else None,
            log_popularity=arrays["log_popularity"] if "log_popularity" in arrays else None,
            **{name: arrays[name] for name in ("u_t", "v_t", "text_out_t") if name in arrays},
        )


def load_encoder(path: Path, checksum: str, version_id: int) -> InterestModel:
    """Entry point used by `interest.registry`."""
    return load_model(path, checksum, version_id)
