"""The training job: learn the interest model from the event log and publish a version.

Settings are chosen on validation, automatically: each user's latest event in the database is
held out, models are fitted on the rest, and the candidates are compared by NDCG@10 of the
held-out item over the whole catalogue (history excluded). The chosen settings are then refitted
on every event and the model is published: file written atomically with its checksum, then a
`model_versions` row marked active. Killing the job at any point leaves the previous version
active; rerunning starts over. Callers reindex afterwards so the index holds the new item side.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from indexer.reindex import load_live_vectors
from interest.correction import DecayCorrection
from interest.evaluation.metrics import hit_rate, ndcg
from interest.ingest import event_weight
from interest.linear import (
    EaseSpectrum,
    Histories,
    TransitionSpectrum,
    history_rows,
    interaction_matrix,
    only_items,
    text_map,
    transition_query_rows,
)
from interest.model import InterestModel, LinearConfig
from interest.profile import closest_slot
from interest.recency import CorrectionWeights, gap_buckets
from store.db import Database
from store.events import event_log
from store.models import ModelVersion
from store.settings import DAY, Settings
from store.versions import add_model_version

log = logging.getLogger(__name__)


class RuntimeLike(Protocol):
    db: Database
    settings: Settings


@dataclass(frozen=True)
class TrainConfig:
    """Candidates searched on validation, and fixed structural settings.

    validation_per_user: latest events per user held out as validation targets (several, so
    that the choice among candidates is not decided by the noise of one target per user).
    content_weight_grid: weights of the content term tried (0: linear model alone).
    cold_weight_grid: weights of the cold term tried (0: none), on the time-cut validation.
    text_in_weight_grid: weights of buffered unseen items' text-mapped input vectors in the
    query tried (0: none), with each cold weight, on the time-cut validation.
    time_cut_quantile: the time-cut validation holds out the events after this quantile of
    event times (the replay protocol's 90%).
    transition_weight_grid, transition_half_life_grid_events, transition_l2_grid: the transition
    term's weight (0: none), position half-life of its history weights (in events) and ridge
    lambda, searched together on each user's latest events on top of the chosen linear part.
    transition_rank: the transition factors' rank (the query and index grow by this much when
    the term is kept).

    l2_grid: EASE lambdas tried. half_life_grid_s: query recency half-lives tried (inf: none).
    rank: factorisation rank (capped by the number of items). max_items: most popular items
    kept in the item-item model (the Gram matrix is items x items). seed: randomised SVD seed.
    """

    l2_grid: tuple[float, ...] = (10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0)
    half_life_grid_s: tuple[float, ...] = tuple(
        d * DAY for d in (0.001, 0.01, 0.1, 1.0, 10.0, math.inf)
    )
    rank: int = 512
    max_items: int = 20_000
    validation_per_user: int = 3
    max_validation_targets: int = 6_000
    content_weight_grid: tuple[float, ...] = (0.0, 0.1, 0.2, 0.5, 1.0, 2.0, 4.0)
    cold_weight_grid: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
    text_in_weight_grid: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0)
    time_cut_quantile: float = 0.9
    transition_weight_grid: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
    transition_half_life_grid_events: tuple[float, ...] = (1.0, 3.0, 10.0)
    transition_l2_grid: tuple[float, ...] = (1.0, 10.0, 100.0)
    transition_rank: int = 512
    use_correction: bool = True
    correction_learning_rate: float = 0.01
    correction_batch_size: int = 256
    correction_epochs: int = 10
    correction_patience: int = 2
    seed: int = 0


@dataclass
class TrainingData:
    item_ids: np.ndarray  # (n,) driftrec ids of the items in the item-item model
    text: np.ndarray  # (n, dim) raw text vectors of those items
    all_ids: np.ndarray  # every indexed item's id
    all_text: np.ndarray  # and raw vector
    histories: Histories  # per user, time-ordered, rows into item_ids


def load_training_data(db: Database, settings: Settings, max_items: int) -> TrainingData:
    """Events in time order (ties by item id), restricted to indexed items."""
    all_ids, all_text, _ = load_live_vectors(db, settings.embedder_model)
    with db.read() as session:
        events = event_log(session)
    known = set(all_ids.tolist())
    counts: dict[int, int] = defaultdict(int)
    for _, item_id, _, _, _ in events:
        if item_id in known:
            counts[item_id] += 1
    kept = sorted(counts, key=lambda i: (-counts[i], i))[:max_items]
    row_of = {item_id: row for row, item_id in enumerate(kept)}
    per_user: dict[int, list[tuple[float, int, float]]] = defaultdict(list)
    for user_id, item_id, kind, value, ts in events:
        if item_id in row_of and kind in settings.event_weights:
            weight = event_weight(settings.event_weights, kind, value)
            if weight > 0:  # negative feedback is not a co-occurrence
                per_user[user_id].append((ts.timestamp(), row_of[item_id], weight))
    users = sorted(per_user)
    histories = Histories(
        rows=[np.array([r for _, r, _ in per_user[u]], dtype=np.int64) for u in users],
        times=[np.array([t for t, _, _ in per_user[u]], dtype=np.float64) for u in users],
        weights=[np.array([w for _, _, w in per_user[u]], dtype=np.float64) for u in users],
    )
    position = {int(i): n for n, i in enumerate(all_ids)}
    item_ids = np.array(kept, dtype=np.int64)
    text = all_text[[position[int(i)] for i in kept]] if kept else all_text[:0]
    return TrainingData(item_ids, text, all_ids, all_text, histories)


Split = tuple[Histories, Histories, np.ndarray, list[np.ndarray], np.ndarray]


def hold_out_latest(histories: Histories, per_user: int) -> Split:
    """Hold out each user's latest ``per_user`` events as validation targets.

    Returns the training histories (everything before the held-out events), one validation
    history per target (the user's events before it), the targets, and per target the items to
    exclude from its ranking (everything the user had seen before it), and the position of
    each target's user in ``histories``. Users with fewer than ``per_user + 1`` events hold out
    fewer.
    """

    def bounds(rows: np.ndarray, times: np.ndarray) -> tuple[int, int]:
        cut = len(rows) - max(min(per_user, len(rows) - 1), 0)
        return cut, cut

    return _hold_out(histories, bounds)


def hold_out_after(histories: Histories, cut: float) -> Split:
    """Hold out every event at or after ``cut`` (epoch s), as `hold_out_latest` returns them.

    Each held-out event is a target ranked with all of its user's earlier events as history,
    held-out ones included (serving folds events in as they come, with no retraining); events
    of users with no earlier event are left out (serving answers those from popularity).
    """

    def bounds(rows: np.ndarray, times: np.ndarray) -> tuple[int, int]:
        before = int(np.searchsorted(times, cut, side="left"))
        return before, max(before, 1)

    return _hold_out(histories, bounds)


def _hold_out(
    histories: Histories, bounds: Callable[[np.ndarray, np.ndarray], tuple[int, int]]
) -> Split:
    """Per user, ``bounds(rows, times)`` gives (end of the training part, first target)."""
    train = Histories([], [], [])
    valid = Histories([], [], [])
    targets: list[int] = []
    seen: list[np.ndarray] = []
    users: list[int] = []
    for user, (rows, times, weights) in enumerate(
        zip(histories.rows, histories.times, histories.weights, strict=True)
    ):
        train_end, first_target = bounds(rows, times)
        train.rows.append(rows[:train_end])
        train.times.append(times[:train_end])
        train.weights.append(weights[:train_end])
        for position in range(first_target, len(rows)):
            valid.rows.append(rows[:position])
            valid.times.append(times[:position])
            valid.weights.append(weights[:position])
            targets.append(int(rows[position]))
            seen.append(rows[:position])
            users.append(user)
    return train, valid, np.array(targets, dtype=np.int64), seen, np.array(users, dtype=np.int64)


def truncate(histories: Histories, buffer_size: int) -> Histories:
    """Keep each user's most recent ``buffer_size`` events: what a profile's buffer holds."""
    return Histories(
        [r[-buffer_size:] for r in histories.rows],
        [t[-buffer_size:] for t in histories.times],
        [w[-buffer_size:] for w in histories.weights],
    )


def ndcg_at_10(scores: np.ndarray, targets: np.ndarray, seen: list[np.ndarray]) -> float:
    """Mean NDCG@10 of one held-out target per row, seen items excluded.

    Ties count against the target (a query that scores everything alike ranks nothing), so a
    setting cannot win by scoring held-out items no better than the rest.
    """
    return ndcg(target_ranks(scores, targets, seen), 10)


def target_ranks(scores: np.ndarray, targets: np.ndarray, seen: list[np.ndarray]) -> np.ndarray:
    """1-based rank of each row's target, seen items excluded, ties against the target (inf
    when the target itself was seen)."""
    scores = scores.copy()
    for row, items in enumerate(seen):
        scores[row, items] = -np.inf
    target_scores = scores[np.arange(len(targets)), targets]
    ranks = (scores >= target_scores[:, None]).sum(axis=1).astype(np.float64)
    ranks[~np.isfinite(target_scores)] = np.inf
    return ranks


@dataclass
class ValidationSet:
    """Held-out latest events, and the linear model's spectrum fitted without them.

    Rankings cover every live item, as serving does: the model's items (those with events),
    then ``extra_text``, the items with no events at all, which serving scores from their text.
    """

    spectrum: EaseSpectrum
    histories: Histories  # per target, the user's events before it
    buffered: Histories  # the same, cut to what a profile buffer holds
    targets: np.ndarray
    seen: list[np.ndarray]
    users: np.ndarray
    train_counts: np.ndarray  # events per item in the training part
    text: np.ndarray  # (n_items, dim) raw text vectors of the model's items
    extra_text: np.ndarray  # (m, dim) raw text vectors of live items without events
    train: Histories  # what the spectra are fitted on
    buffer_size: int  # events a profile buffer holds
    #: Transition spectra fitted on ``train``, by position half-life (`transition_spectrum`).
    transition_spectra: dict[float, TransitionSpectrum] = dataclasses.field(default_factory=dict)

    def transition_spectrum(
        self, half_life_events: float, config: TrainConfig
    ) -> TransitionSpectrum:
        if half_life_events not in self.transition_spectra:
            self.transition_spectra[half_life_events] = TransitionSpectrum(
                self.train,
                len(self.train_counts),
                buffer_size=self.buffer_size,
                half_life_events=half_life_events,
                rank=config.transition_rank,
                seed=config.seed,
            )
        return self.transition_spectra[half_life_events]

    @classmethod
    def build(cls, data: TrainingData, config: TrainConfig, buffer_size: int) -> ValidationSet:
        """Each user's latest events held out (`hold_out_latest`)."""
        split = hold_out_latest(data.histories, config.validation_per_user)
        return cls._from_split(data, config, buffer_size, split)

    @classmethod
    def build_time_cut(
        cls, data: TrainingData, config: TrainConfig, buffer_size: int
    ) -> ValidationSet:
        """The latest part of the log held out (`hold_out_after`): what a model meets between
        two trainings, items first seen after the cut included."""
        times = np.concatenate(data.histories.times) if len(data.histories) else np.zeros(0)
        cut = float(np.quantile(times, config.time_cut_quantile)) if len(times) else 0.0
        return cls._from_split(data, config, buffer_size, hold_out_after(data.histories, cut))

    @classmethod
    def _from_split(
        cls,
        data: TrainingData,
        config: TrainConfig,
        buffer_size: int,
        split: Split,
    ) -> ValidationSet:
        train_h, valid_h, targets, seen, users = split
        if len(targets) > config.max_validation_targets:
            rng = np.random.default_rng(config.seed)
            keep = np.sort(rng.choice(len(targets), config.max_validation_targets, replace=False))
            valid_h = Histories(
                [valid_h.rows[i] for i in keep],
                [valid_h.times[i] for i in keep],
                [valid_h.weights[i] for i in keep],
            )
            targets, seen, users = targets[keep], [seen[i] for i in keep], users[keep]
        n_items = len(data.item_ids)
        spectrum = EaseSpectrum(
            interaction_matrix(train_h, n_items), rank=config.rank, seed=config.seed
        )
        return cls(
            spectrum,
            valid_h,
            truncate(valid_h, buffer_size),
            targets,
            seen,
            users,
            item_counts(train_h, n_items),
            data.text,
            data.all_text[np.isin(data.all_ids, data.item_ids, invert=True)],
            train_h,
            buffer_size,
        )


def item_counts(histories: Histories, n_items: int) -> np.ndarray:
    return (
        np.bincount(np.concatenate(histories.rows), minlength=n_items).astype(np.float64)
        if histories.rows
        else np.zeros(n_items)
    )


def choose_linear_settings(
    validation: ValidationSet, config: TrainConfig, progress: bool
) -> tuple[float, float, dict[str, Any]]:
    """Pick (l2, half-life) by validation NDCG@10 over the grid, scoring exactly as served:
    factorised to ``config.rank`` and blending only the events a profile buffer holds."""
    n_items = len(validation.train_counts)
    rows_by_half_life = {
        hl: history_rows(validation.buffered, n_items, hl) for hl in config.half_life_grid_s
    }
    grid: dict[str, float] = {}
    best = (-1.0, config.l2_grid[0], math.inf)
    bar = tqdm(
        total=len(config.l2_grid) * len(config.half_life_grid_s),
        desc="validation",
        disable=not progress,
    )
    for l2 in config.l2_grid:
        u, v = validation.spectrum.factors(l2, config.rank)  # once per lambda
        for half_life in config.half_life_grid_s:
            scores = (rows_by_half_life[half_life] @ u) @ v.T
            value = ndcg_at_10(scores, validation.targets, validation.seen)
            grid[f"l2={l2:g},half_life_days={half_life / DAY:g}"] = value
            if value > best[0]:
                best = (value, l2, half_life)
            bar.update()
    bar.close()
    value, l2, half_life = best
    log.info(
        "train chosen l2=%g half_life_days=%g validation_ndcg10=%.4f", l2, half_life / DAY, value
    )
    return l2, half_life, {"validation_ndcg@10": value, "grid": grid}


@dataclass(frozen=True)
class TransitionChoice:
    """The transition term's settings; weight 0 leaves it out."""

    weight: float = 0.0
    half_life_events: float = 1.0
    l2: float = 0.0


def transition_factors(
    validation: ValidationSet, choice: TransitionChoice, config: TrainConfig
) -> tuple[np.ndarray, np.ndarray]:
    """(the weighted transition queries of the validation buffers, ``V_T``) for ``choice``.

    As served, positions count among the buffered events the fit has rows for (items with
    events in it): others have no ``U_T`` row.
    """
    spectrum = validation.transition_spectrum(choice.half_life_events, config)
    u_t, v_t = spectrum.factors(choice.l2, config.transition_rank)
    known = only_items(validation.buffered, validation.train_counts > 0)
    rows = transition_query_rows(known, len(validation.train_counts), choice.half_life_events)
    return choice.weight * (rows @ u_t), v_t


def choose_transition(
    validation: ValidationSet,
    l2: float,
    half_life: float,
    config: TrainConfig,
    progress: bool,
) -> tuple[TransitionChoice, dict[str, Any]]:
    """Pick the transition term's weight, position half-life and lambda together by NDCG@10 on
    each user's latest events, on top of the linear part as chosen (weight 0: left out, which
    wins unless the term improves validation)."""
    weights = [w for w in config.transition_weight_grid if w > 0]
    if not weights:
        return TransitionChoice(), {"transition_weight": 0.0}
    n_items = len(validation.train_counts)
    u, v = validation.spectrum.factors(l2, config.rank)
    # float64 like `choose_linear_settings`, so that weight 0 scores what it scored there.
    base = (history_rows(validation.buffered, n_items, half_life) @ u) @ v.T
    for row, items in enumerate(validation.seen):
        base[row, items] = -np.inf  # excluded once here, for every candidate below
    unseen = [np.zeros(0, dtype=np.int64)] * len(validation.targets)
    without = ndcg_at_10(base, validation.targets, unseen)
    best = (without, TransitionChoice())
    grid: dict[str, float] = {}
    combos = [
        (h, lam)
        for h in config.transition_half_life_grid_events
        for lam in config.transition_l2_grid
    ]
    for h, lam in tqdm(combos, desc="transition", disable=not progress):
        query, v_t = transition_factors(validation, TransitionChoice(1.0, h, lam), config)
        transition = query @ v_t.T
        for weight in weights:
            value = ndcg_at_10(base + weight * transition, validation.targets, unseen)
            grid[f"half_life_events={h:g},l2={lam:g},weight={weight:g}"] = value
            if value > best[0] + 1e-12:
                best = (value, TransitionChoice(weight, h, lam))
    value, choice = best
    log.info(
        "train transition weight=%g half_life_events=%g l2=%g validation_ndcg10=%.4f without=%.4f",
        choice.weight,
        choice.half_life_events,
        choice.l2,
        value,
        without,
    )
    return choice, {
        "transition_weight": choice.weight,
        "transition_half_life_events": choice.half_life_events,
        "transition_l2": choice.l2,
        "transition_validation_ndcg@10": value,
        "transition_validation_ndcg@10_without": without,
        "transition_grid": grid,
    }


def content_half_life(half_lives: Sequence[float], linear_half_life: float) -> float:
    """The profile accumulator's half-life closest to the linear part's (what serving blends)."""
    return half_lives[closest_slot(half_lives, linear_half_life)]


def median_norm(v: np.ndarray) -> float:
    norms = np.linalg.norm(v, axis=1)
    norms = norms[norms > 0]
    return float(np.median(norms)) if len(norms) else 1.0


@dataclass
class ItemSideTerms:
    """Validation scores of the served query's terms over every live item (the model's items,
    then those without events), for choosing the content and cold weights.

    Items without events in the validation fit are scored as serving scores items the model has
    not seen: ``V`` from the ridge map of their text (fitted on the other items), a 1 in the
    cold coordinate, and in the query their text through the ``text_in`` ridge map, with the
    text-in weight (`with_text_in`; none in ``linear``).
    """

    linear: np.ndarray  # (targets, items) q . V
    content: np.ndarray  # (targets, items) cosine of the profile's text blend, item text
    scale: np.ndarray  # (targets, 1) |q| * median |V|: the terms' common scale
    cold_share: np.ndarray  # (targets, 1) recency weight share of cold items in the buffer
    cold: np.ndarray  # (items,) 1.0 for items without events in the validation fit
    # With the text-in term the curve starts at the newest buffered event (every item in a
    # validation buffer has a text vector): the known items' and the unseen items' parts of
    # the query on that curve, the index vectors, and median |V|.
    query_known: np.ndarray  # (targets, rank)
    query_text: np.ndarray  # (targets, rank) before the text-in weight
    v_all: np.ndarray  # (items, rank)
    v_median: float
    #: (targets, items) the weighted transition term's scores, when it is on.
    transition: np.ndarray | None = None

    def scores(self, content_weight: float, cold_weight: float) -> np.ndarray:
        out = self.linear + (content_weight * self.scale) * self.content
        if self.transition is not None:
            out += self.transition
        if cold_weight > 0:
            out += (cold_weight * self.scale * self.cold_share) * self.cold[None, :]
        return out

    def with_text_in(self, weight: float) -> ItemSideTerms:
        """The same terms with buffered unseen items in the query at ``weight`` (0: as is)."""
        if weight <= 0:
            return self
        query = self.query_known + weight * self.query_text
        norm = np.linalg.norm(query, axis=1, keepdims=True)
        return dataclasses.replace(
            self,
            linear=(query @ self.v_all.T).astype(np.float32),
            scale=(np.where(norm > 0, norm, 1.0) * self.v_median).astype(np.float32),
        )


def item_side_terms(
    validation: ValidationSet,
    l2: float,
    half_life: float,
    content_half_life_s: float,
    config: TrainConfig,
    transition: TransitionChoice,
) -> ItemSideTerms:
    u, v = validation.spectrum.factors(l2, config.rank)
    n_items = len(validation.train_counts)
    warm = validation.train_counts > 0
    v_all = _with_text_rows(validation, v)
    cold = np.concatenate([~warm, np.ones(len(validation.extra_text), dtype=bool)])
    # The query's curve starts at the newest known item (as `InterestModel.query` does).
    known_only = only_items(validation.buffered, warm)
    query = history_rows(known_only, n_items, half_life) @ u
    buffer_weights = history_rows(validation.buffered, n_items, half_life)
    total = buffer_weights.sum(axis=1, keepdims=True)
    cold_share = buffer_weights[:, ~warm].sum(axis=1, keepdims=True) / np.maximum(total, 1e-300)
    blend = history_rows(validation.histories, n_items, content_half_life_s) @ validation.text
    blend /= np.maximum(np.linalg.norm(blend, axis=1, keepdims=True), 1e-12)
    query_norm = np.linalg.norm(query, axis=1, keepdims=True)
    v_median = median_norm(v[warm])
    text_in = text_map(validation.text[warm], u[warm])
    return ItemSideTerms(
        linear=(query @ v_all.T).astype(np.float32),
        content=(blend @ np.vstack([validation.text, validation.extra_text]).T).astype(np.float32),
        scale=(np.where(query_norm > 0, query_norm, 1.0) * v_median).astype(np.float32),
        cold_share=cold_share.astype(np.float32),
        cold=cold.astype(np.float32),
        query_known=buffer_weights[:, warm] @ u[warm],
        query_text=buffer_weights[:, ~warm] @ (validation.text[~warm] @ text_in),
        v_all=v_all,
        v_median=v_median,
        transition=_transition_scores(validation, transition, config),
    )


def _with_text_rows(validation: ValidationSet, v: np.ndarray) -> np.ndarray:
    """Index vectors of every live item: ``v`` for items with events in the fit, the rest (and
    the items with no events at all, after them) from the ridge map of text to ``v``."""
    warm = validation.train_counts > 0
    text_out = text_map(validation.text[warm], v[warm])
    v = v.copy()
    v[~warm] = validation.text[~warm] @ text_out
    return np.vstack([v, validation.extra_text @ text_out])


def _transition_scores(
    validation: ValidationSet, transition: TransitionChoice, config: TrainConfig
) -> np.ndarray | None:
    """The transition term's scores over every live item (unseen ones from text), or None."""
    if transition.weight <= 0:
        return None
    query, v_t = transition_factors(validation, transition, config)
    return (query @ _with_text_rows(validation, v_t).T).astype(np.float32)


def choose_content_weight(
    validation: ValidationSet,
    l2: float,
    half_life: float,
    content_half_life_s: float,
    config: TrainConfig,
    transition: TransitionChoice = TransitionChoice(),
) -> tuple[float, dict[str, Any]]:
    """Pick the content term's weight by validation NDCG@10 on each user's latest events (0
    keeps the linear model alone), with the transition term as chosen."""
    terms = item_side_terms(validation, l2, half_life, content_half_life_s, config, transition)
    weight, value, grid = _best_weight(
        validation, config.content_weight_grid, lambda w: terms.scores(w, 0.0)
    )
    log.info("train content weight=%g validation_ndcg10=%.4f", weight, value)
    return weight, {
        "content_weight": weight,
        "content_validation_ndcg@10": value,
        "content_grid": grid,
    }


def choose_cold_weights(
    validation: ValidationSet,
    l2: float,
    half_life: float,
    content_half_life_s: float,
    content_weight: float,
    config: TrainConfig,
    transition: TransitionChoice = TransitionChoice(),
) -> tuple[float, float, dict[str, Any]]:
    """Pick the cold term's weight and the text-in weight together by NDCG@10 on the time-cut
    validation; return (cold weight, text-in weight, metrics). 0 switches either off.

    There, as in service, items first seen after the cut are targets and items with no event
    at all compete in every ranking; only the content and cold terms can rank such items, and
    the choice weighs that against what the cold term costs on the other targets. The text-in
    weight decides how much buffered events on such items move the linear query (their text
    mapped to an input vector). (Each user's latest events cannot judge this: their histories
    are almost all on items with events.)
    """
    terms = item_side_terms(validation, l2, half_life, content_half_life_s, config, transition)
    grid: dict[str, float] = {}
    best = (-1.0, config.cold_weight_grid[0], config.text_in_weight_grid[0])
    best_without_text_in: float | None = None
    for text_in_weight in config.text_in_weight_grid:
        with_text = terms.with_text_in(text_in_weight)
        cold_weight, value, values = _best_weight(
            validation,
            config.cold_weight_grid,
            lambda w, t=with_text: t.scores(content_weight, w),
        )
        grid.update({f"text_in={text_in_weight:g},{k}": v for k, v in values.items()})
        if text_in_weight == 0:
            best_without_text_in = value
        if value > best[0] + 1e-12:
            best = (value, cold_weight, text_in_weight)
    value, cold_weight, text_in_weight = best
    cold_targets = terms.cold[validation.targets] > 0

    def cold_hit_rate(cold: float, text_in: float) -> float | None:
        if not cold_targets.any():
            return None
        scores = terms.with_text_in(text_in).scores(content_weight, cold)
        ranks = target_ranks(scores, validation.targets, validation.seen)
        return hit_rate(ranks[cold_targets], 10)

    log.info(
        "train cold weight=%g text_in weight=%g time-cut validation_ndcg10=%.4f without_text_in=%s",
        cold_weight,
        text_in_weight,
        value,
        None if best_without_text_in is None else f"{best_without_text_in:.4f}",
    )
    without_cold = grid.get(f"text_in={text_in_weight:g},weight=0")
    return (
        cold_weight,
        text_in_weight,
        {
            "cold_weight": cold_weight,
            "text_in_weight": text_in_weight,
            "time_cut_validation_ndcg@10": value,
            "time_cut_validation_ndcg@10_without_cold": without_cold,
            "time_cut_validation_ndcg@10_without_text_in": best_without_text_in,
            "time_cut_validation_targets": len(validation.targets),
            "time_cut_validation_cold_targets": int(cold_targets.sum()),
            "time_cut_validation_cold_hr@10": cold_hit_rate(cold_weight, text_in_weight),
            "time_cut_validation_cold_hr@10_without_cold": cold_hit_rate(0.0, text_in_weight),
            "time_cut_validation_cold_hr@10_without_text_in": cold_hit_rate(cold_weight, 0.0),
            "cold_grid": grid,
        },
    )


def _best_weight(
    validation: ValidationSet,
    grid: Sequence[float],
    scores: Callable[[float], np.ndarray],
) -> tuple[float, float, dict[str, float]]:
    """(weight with the best validation NDCG@10, that NDCG, NDCG per weight); the first of
    equals wins, so list the simpler setting first."""
    values = {}
    best = (-1.0, grid[0])
    for weight in grid:
        value = ndcg_at_10(scores(weight), validation.targets, validation.seen)
        values[f"weight={weight:g}"] = value
        if value > best[0] + 1e-12:
            best = (value, weight)
    return best[1], best[0], values


def _buffer_tensors(buffered: Histories, buffer_size: int) -> tuple[np.ndarray, ...]:
    """Padded (rows, positions, age buckets, weights) of every buffer, newest event last."""
    n = len(buffered)
    rows = np.zeros((n, buffer_size), dtype=np.int64)
    positions = np.zeros((n, buffer_size), dtype=np.int64)
    gaps = np.zeros((n, buffer_size), dtype=np.int64)
    weights = np.zeros((n, buffer_size), dtype=np.float32)
    for i, (r, t, w) in enumerate(
        zip(buffered.rows, buffered.times, buffered.weights, strict=True)
    ):
        m = len(r)
        if m == 0:
            continue
        rows[i, :m], weights[i, :m] = r, w
        positions[i, :m] = np.arange(m)[::-1]
        gaps[i, :m] = gap_buckets(t.max() - t)
    return rows, positions, gaps, weights


def fit_correction(
    validation: ValidationSet,
    l2: float,
    half_life: float,
    config: TrainConfig,
    buffer_size: int,
    progress: bool,
) -> tuple[CorrectionWeights | None, dict[str, Any]]:
    """Train the correction network on held-out events of 80% of users; keep it only if it
    beats the plain recency curve on the other 20%."""
    torch.manual_seed(config.seed)
    u, v = validation.spectrum.factors(l2, config.rank)
    rows, positions, gaps, weights = _buffer_tensors(validation.buffered, buffer_size)
    rng = np.random.default_rng(config.seed)
    unique_users = np.unique(validation.users)
    held_users = set(
        rng.choice(unique_users, size=max(1, len(unique_users) // 5), replace=False).tolist()
    )
    held = np.array([user in held_users for user in validation.users])
    fit_idx, eval_idx = np.flatnonzero(~held), np.flatnonzero(held)
    if len(fit_idx) < 10 or len(eval_idx) < 10:
        return None, {"correction": "skipped: too few held-out events"}
    u_t, v_t = torch.from_numpy(u), torch.from_numpy(v)
    log_pop = torch.from_numpy(np.log1p(validation.train_counts).astype(np.float32))
    net = DecayCorrection(buffer_size, half_life)
    optimiser = torch.optim.Adam(net.parameters(), lr=config.correction_learning_rate)

    def logits(idx: np.ndarray) -> torch.Tensor:
        out = net(
            u_t[torch.from_numpy(rows[idx])],
            torch.from_numpy(positions[idx]),
            torch.from_numpy(gaps[idx]),
            torch.from_numpy(weights[idx]),
            v_t,
            log_pop,
        )
        for row, example in enumerate(idx):
            out[row, validation.seen[example]] = -torch.inf
        return out

    def held_ndcg() -> float:
        with torch.no_grad():
            scores = logits(eval_idx).numpy()
        return ndcg_at_10(
            scores, validation.targets[eval_idx], [np.zeros(0, np.int64)] * len(eval_idx)
        )

    baseline = best = held_ndcg()
    best_state = {k: p.detach().clone() for k, p in net.state_dict().items()}
    stale = 0
    targets = torch.from_numpy(validation.targets)
    epochs = 0
    for _ in tqdm(range(config.correction_epochs), desc="correction", disable=not progress):
        epochs += 1
        order = rng.permutation(fit_idx)
        for start in range(0, len(order), config.correction_batch_size):
            batch = order[start : start + config.correction_batch_size]
            loss = nn.functional.cross_entropy(logits(batch), targets[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        value = held_ndcg()
        if value > best:
            best, stale = value, 0
            best_state = {k: p.detach().clone() for k, p in net.state_dict().items()}
        else:
            stale += 1
            if stale >= config.correction_patience:
                break
    net.load_state_dict(best_state)
    metrics = {
        "correction_heldout_ndcg@10": best,
        "plain_curve_heldout_ndcg@10": baseline,
        "correction_epochs": epochs,
    }
    if best <= baseline:
        metrics["correction"] = "not kept: no better than the plain recency curve"
        return None, metrics
    metrics["correction"] = "kept"
    log.info("train correction kept heldout_ndcg10=%.4f plain=%.4f", best, baseline)
    return net.export(), metrics


def fit_linear(
    data: TrainingData,
    l2: float,
    half_life: float,
    config: TrainConfig,
    buffer_size: int,
    transition: TransitionChoice = TransitionChoice(),
) -> InterestModel:
    """EASE on every event in factorised form, with text maps for items it has not seen, and
    the transition term when it was chosen."""
    spectrum = EaseSpectrum(
        interaction_matrix(data.histories, len(data.item_ids)), rank=config.rank, seed=config.seed
    )
    u, v = spectrum.factors(l2, config.rank)
    model = InterestModel(
        config=LinearConfig(
            l2=l2,
            half_life_s=half_life,
            rank=u.shape[1],
            buffer_size=buffer_size,
            transition_weight=transition.weight,
            transition_half_life_events=transition.half_life_events,
            transition_l2=transition.l2,
        ),
        item_ids=data.item_ids,
        u=u,
        v=v,
        text_in=text_map(data.text, u),
        text_out=text_map(data.text, v),
        metrics={},
    )
    if transition.weight > 0:
        model.u_t, model.v_t = TransitionSpectrum(
            data.histories,
            len(data.item_ids),
            buffer_size=buffer_size,
            half_life_events=transition.half_life_events,
            rank=config.transition_rank,
            seed=config.seed,
        ).factors(transition.l2, config.transition_rank)
        model.text_out_t = text_map(data.text, model.v_t)
    return model


def train(
    runtime: RuntimeLike,
    *,
    progress: bool = False,
    config: TrainConfig | None = None,
    activate: bool = True,
) -> int:
    """Train on the events in the database and publish a model version; return its id."""
    config = config or TrainConfig()
    settings = runtime.settings
    started = time.perf_counter()
    data = load_training_data(runtime.db, settings, config.max_items)
    if len(data.item_ids) < 2 or not any(len(r) >= 2 for r in data.histories.rows):
        raise ValueError("not enough events to train: need users with at least two events")
    buffer_size = settings.recent_buffer_size
    validation = ValidationSet.build(data, config, buffer_size)
    l2, half_life, chosen = choose_linear_settings(validation, config, progress)
    transition, transition_metrics = choose_transition(validation, l2, half_life, config, progress)
    correction, correction_metrics = (
        fit_correction(validation, l2, half_life, config, buffer_size, progress)
        if config.use_correction
        else (None, {"correction": "off"})
    )
    content_half_life_s = content_half_life(settings.half_lives, half_life)
    content_weight, content_metrics = choose_content_weight(
        validation, l2, half_life, content_half_life_s, config, transition
    )
    cold_weight, text_in_weight, cold_metrics = (
        choose_cold_weights(
            ValidationSet.build_time_cut(data, config, buffer_size),
            l2,
            half_life,
            content_half_life_s,
            content_weight,
            config,
            transition,
        )
        if any(w > 0 for w in (*config.cold_weight_grid, *config.text_in_weight_grid))
        else (0.0, 0.0, {"cold_weight": 0.0, "text_in_weight": 0.0})
    )
    model = fit_linear(data, l2, half_life, config, buffer_size, transition)
    model.config = dataclasses.replace(
        model.config,
        content_weight=content_weight,
        content_half_life_s=content_half_life_s,
        v_scale=median_norm(model.v),
        cold_weight=cold_weight,
        text_in_weight=text_in_weight,
    )
    if correction is not None:
        model.correction = correction
        model.log_popularity = np.log1p(item_counts(data.histories, len(data.item_ids)))
    model.metrics = {
        **chosen,
        **{k: v for k, v in transition_metrics.items() if k != "transition_grid"},
        **correction_metrics,
        **{k: v for k, v in content_metrics.items() if k != "content_grid"},
        **{k: v for k, v in cold_metrics.items() if k != "cold_grid"},
        "train_s": time.perf_counter() - started,
        "items": int(len(data.item_ids)),
        "users": len(data.histories),
    }
    return publish(runtime, model, activate=activate)


def publish(runtime: RuntimeLike, model: InterestModel, *, activate: bool) -> int:
    settings = runtime.settings
    path = settings.model_dir / f"model-{uuid.uuid4().hex}.npz"
    checksum = model.save(path)
    config: dict[str, Any] = {
        "l2": model.config.l2,
        "half_life_s": None if math.isinf(model.config.half_life_s) else model.config.half_life_s,
        "rank": model.config.rank,
        "buffer_size": model.config.buffer_size,
        "content_weight": model.config.content_weight,
        "cold_weight": model.config.cold_weight,
        "text_in_weight": model.config.text_in_weight,
        "transition_weight": model.config.transition_weight,
        "transition_half_life_events": model.config.transition_half_life_events,
        "transition_l2": model.config.transition_l2,
    }
    with runtime.db.write() as session:
        version = add_model_version(
            session,
            ModelVersion(
                path=str(path.resolve()),
                checksum=checksum,
                embedder_model=settings.embedder_model,
                config=config,
                metrics={k: v for k, v in model.metrics.items() if k != "grid"},
            ),
            activate=activate,
        )
        version_id = version.id
    log.info("model published version=%d path=%s", version_id, path)
    return version_id
