"""Offline evaluation: one split, every method ranked the same way, one JSON-ready result.

Protocols (shared/EVALUATION.md):
- ``leave-last-out``: each user's last interaction is the target; the history (everything
  before it) is excluded from the ranking; training data is every interaction but the last.
- ``replay``: events before the 90% quantile of timestamps are the training data; the rest are
  replayed in time order through the production ingest path, each one ranked just before it.

Baseline settings are chosen on the validation target (each user's last training interaction),
never on the test target. Production-path methods need a runtime factory
(`service.runtime.Runtime`), injected because `interest` never imports `service`.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from interest.evaluation import metrics
from interest.evaluation.baselines import EASE_MAX_DIM, Ease, ItemKNN, Model, Popularity
from interest.evaluation.data import Dataset, load_dataset
from interest.evaluation.embedding_cache import EmbeddingCache
from interest.evaluation.errors import EvaluationError
from interest.evaluation.names import (
    ABLATIONS,
    BASELINES,
    DEFAULT_METHODS,
    LEAVE_LAST_OUT,
    METHODS,
    PRODUCTION,
    PROTOCOLS,
    REPLAY,
    TRAIN_OVERRIDES,
)
from interest.evaluation.production import ProductionBench, RuntimeFactory, load_trainer
from interest.evaluation.ranking import Ranked, rank_cases
from interest.evaluation.split import Cases, Split, leave_last_out, replay_split, validation_split
from interest.profile import closest_slot
from store.settings import DAY, Settings

log = logging.getLogger(__name__)

#: History-length buckets for the per-bucket NDCG (lower bounds; the last is open).
HISTORY_BUCKETS = (0, 1, 10, 20, 50, 100, 250, 500)


@dataclass(frozen=True)
class EvaluationConfig:
    protocol: str = LEAVE_LAST_OUT
    methods: tuple[str, ...] = DEFAULT_METHODS
    #: Where embeddings persist between runs, keyed by (model, content hash); None: no cache.
    cache_dir: Path | None = None
    include_tags: bool = False
    #: Working directory for the temporary databases; None: a fresh temporary directory.
    workdir: Path | None = None
    ease_lambdas: tuple[float, ...] = (50.0, 100.0, 250.0, 500.0, 1000.0)
    #: Recency half-lives (days) of the baselines' history rows; inf = unweighted. The short end
    #: matches what `interest.train` searches for driftrec (its grid stops at 10 days; this one
    #: adds 7 and 30), so baselines get every advantage driftrec gets.
    half_lives_days: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0, 7.0, 30.0, math.inf)
    #: Half-life of the `content_decayed` plain blend (seconds).
    decayed_half_life_s: float = DAY
    k: int = 10
    recall_k: int = 20
    n_bootstrap: int = 1000
    seed: int = 0
    replay_quantile: float = 0.9
    progress: bool = False

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise EvaluationError(f"unknown protocol {self.protocol!r}: use {', '.join(PROTOCOLS)}")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise EvaluationError(
                f"unknown method(s) {', '.join(unknown) or '(none given)'}: "
                f"choose from {', '.join(METHODS)}"
            )


@dataclass
class _Timer:
    timings: dict[str, float] = field(default_factory=dict)

    def lap(self, name: str, since: float) -> float:
        now = time.perf_counter()
        self.timings[name] = round(now - since, 3)
        return now


# --- metrics of one method ----------------------------------------------------------------


def history_bucket(length: int) -> str:
    lows = HISTORY_BUCKETS
    for low, high in zip(lows, (*lows[1:], None), strict=True):
        if high is None or length < high:
            if high is None:
                return f"{low}+"
            return str(low) if high - low == 1 else f"{low}-{high - 1}"
    raise AssertionError("unreachable")


def summarise(
    ranked: Ranked,
    cases: Cases,
    n_items: int,
    config: EvaluationConfig,
    new_items: np.ndarray | None = None,
) -> dict[str, Any]:
    """The protocol's metrics for one method's ranks and top lists."""
    k, rk = config.k, config.recall_k
    gains = metrics.ndcg_gains(ranked.ranks, k)
    lo, hi = metrics.bootstrap_ci(gains, n_resamples=config.n_bootstrap, seed=config.seed)
    out: dict[str, Any] = {
        f"hr@{k}": metrics.hit_rate(ranked.ranks, k),
        f"ndcg@{k}": metrics.ndcg(ranked.ranks, k),
        f"recall@{rk}": metrics.recall(ranked.ranks, rk),
        f"coverage@{k}": metrics.coverage((t[:k] for t in ranked.top), n_items),
        f"ndcg@{k}_ci95": [lo, hi],
        "n_cases": len(ranked.ranks),
    }
    if new_items is not None:
        out[f"new_item_hr@{k}"] = (
            metrics.hit_rate(ranked.ranks[new_items], k) if new_items.any() else None
        )
        out["new_item_count"] = int(new_items.sum())
    buckets: dict[str, list[float]] = {}
    for length, gain in zip(cases.history_lengths(), gains, strict=True):
        buckets.setdefault(history_bucket(int(length)), []).append(float(gain))
    ordered = sorted(buckets, key=lambda b: int(b.split("-")[0].rstrip("+")))
    out[f"ndcg@{k}_by_history"] = {
        b: {"n": len(buckets[b]), f"ndcg@{k}": float(np.mean(buckets[b]))} for b in ordered
    }
    return out


# --- baselines ----------------------------------------------------------------------------


def _validation_ndcg(model: Model, valid: Split, n_items: int, hl: float, k: int) -> float:
    return metrics.ndcg(rank_cases(model, valid.cases, n_items, half_life_days=hl, k=k).ranks, k)


def _days(value: float) -> float | str:
    return "inf" if math.isinf(value) else value


def run_baseline(
    name: str, split: Split, valid: Split, n_items: int, config: EvaluationConfig
) -> tuple[Ranked, dict[str, Any], dict[str, float]]:
    """Choose settings on ``valid``, fit on the training data, rank the cases."""
    timer = _Timer()
    clock = time.perf_counter()
    k = config.k
    settings: dict[str, Any] = {}
    grid: list[dict[str, Any]] = []
    if name == "popularity":
        half_life = math.inf
        clock = timer.lap("tune_s", clock)
        model: Model = Popularity(split.train, n_items)
    elif name == "itemknn":
        candidate = ItemKNN(valid.train, n_items)
        for hl in config.half_lives_days:
            score = _validation_ndcg(candidate, valid, n_items, hl, k)
            grid.append({"half_life_days": _days(hl), f"valid_ndcg@{k}": score})
        best = max(range(len(grid)), key=lambda i: grid[i][f"valid_ndcg@{k}"])
        half_life = config.half_lives_days[best]
        settings["half_life_days"] = _days(half_life)
        clock = timer.lap("tune_s", clock)
        model = ItemKNN(split.train, n_items)
    elif name == "ease":
        best_score, lam, half_life = -1.0, config.ease_lambdas[0], math.inf
        for candidate_lam in config.ease_lambdas:
            candidate_model = Ease(valid.train, n_items, candidate_lam)
            for hl in config.half_lives_days:
                score = _validation_ndcg(candidate_model, valid, n_items, hl, k)
                grid.append(
                    {"lambda": candidate_lam, "half_life_days": _days(hl), f"valid_ndcg@{k}": score}
                )
                if score > best_score:
                    best_score, lam, half_life = score, candidate_lam, hl
        settings.update({"lambda": lam, "half_life_days": _days(half_life)})
        clock = timer.lap("tune_s", clock)
        model = Ease(split.train, n_items, lam)
    else:
        raise EvaluationError(f"not a baseline: {name}")
    if grid:
        settings["validation_grid"] = grid
    clock = timer.lap("fit_s", clock)
    ranked = rank_cases(model, split.cases, n_items, half_life_days=half_life, k=k)
    timer.lap("rank_s", clock)
    return ranked, settings, timer.timings


# --- the whole evaluation -----------------------------------------------------------------


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


def _make_split(dataset: Dataset, config: EvaluationConfig) -> Split:
    if config.protocol == REPLAY:
        return replay_split(dataset.log, config.replay_quantile)
    return leave_last_out(dataset.log)


def evaluate(
    dataset_dir: str | Path,
    settings: Settings,
    config: EvaluationConfig,
    *,
    runtime_factory: RuntimeFactory | None = None,
    echo: Callable[[str], None] = lambda _line: None,
) -> dict[str, Any]:
    """Run every requested method on one split of ``dataset_dir``; return the JSON result."""
    timer = _Timer()
    clock = time.perf_counter()
    dataset = load_dataset(dataset_dir, settings.event_weights, include_tags=config.include_tags)
    clock = timer.lap("load_s", clock)
    split = _make_split(dataset, config)
    valid = validation_split(split.train)
    clock = timer.lap("split_s", clock)
    if not len(split.cases):
        raise EvaluationError("the split has no cases to rank (every user has one interaction?)")
    echo(
        f"{dataset.name}: {dataset.n_users} users, {dataset.n_items} items, "
        f"{len(dataset.log)} interactions; {config.protocol}: {len(split.cases)} cases, "
        f"{len(split.train)} training interactions"
    )
    new_items = None
    if config.protocol == REPLAY:
        known = np.zeros(dataset.n_items, dtype=bool)
        known[split.train.items] = True
        new_items = ~known[split.cases.targets]

    results: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    for name in (m for m in config.methods if m in BASELINES):
        echo(f"{name}: tuning on validation, fitting, ranking")
        try:
            ranked, chosen, timings = run_baseline(name, split, valid, dataset.n_items, config)
        except ValueError as exc:
            if name != "ease":
                raise
            note = f"ease skipped: {exc} (limit {EASE_MAX_DIM})"
            notes.append(note)
            results[name] = {"skipped": note}
            continue
        results[name] = summarise(ranked, split.cases, dataset.n_items, config, new_items)
        results[name].update(settings=chosen, timings_s=timings)

    production = [m for m in config.methods if m in PRODUCTION or m in ABLATIONS]
    if production:
        if runtime_factory is None:
            raise EvaluationError(f"{', '.join(production)} need a runtime factory")
        clock = time.perf_counter()
        with _workdir(config.workdir) as workdir:
            cache = (
                EmbeddingCache(config.cache_dir, settings.embedder_model)
                if config.cache_dir is not None
                else None
            )
            bench = ProductionBench(
                dataset,
                split,
                config.protocol,
                settings,
                runtime_factory,
                workdir,
                cache=cache,
                retrieve=max(config.k, config.recall_k),
                k=config.k,
                progress=config.progress,
            )
            echo("production path: importing, embedding, indexing, building profiles")
            prepared = bench.prepare()
            clock = timer.lap("prepare_s", clock)
            timer.timings.update({f"prepare_{k}": round(v, 3) for k, v in prepared.items()})
            for name in production:
                echo(f"{name}: ranking through the production path")
                half_life, train = _production_settings(name, settings, config)
                run = bench.run(
                    name,
                    blend_half_life=half_life,
                    train=train,
                    train_overrides=TRAIN_OVERRIDES.get(name, {}),
                )
                results[name] = summarise(
                    run.ranked, split.cases, dataset.n_items, config, new_items
                )
                slot = settings.half_lives[closest_slot(settings.half_lives, half_life)]
                run.settings["profile_half_life_s"] = "inf" if math.isinf(slot) else slot
                results[name].update(
                    settings=run.settings,
                    timings_s={k: round(v, 3) for k, v in run.timings.items()},
                )
                if name == "driftrec" and run.settings.get("model", "").startswith("plain"):
                    notes.append(
                        "driftrec: interest.train is not available, so it is the plain blend "
                        f"at the configured blend_half_life ({settings.blend_half_life:g} s)"
                    )

    out: dict[str, Any] = {
        "dataset": str(dataset_dir),
        "dataset_format": dataset.format,
        "protocol": config.protocol,
        "n_users": dataset.n_users,
        "n_items": dataset.n_items,
        "n_interactions": len(dataset.log),
        "n_train_interactions": len(split.train),
        "n_cases": len(split.cases),
        "item_text": "title + genres" + (" + tags" if config.include_tags else ""),
        "embedder_model": settings.embedder_model,
        "results": results,
        "timings_s": {**timer.timings, "methods_s": round(_methods_time(results), 3)},
        "created_at": datetime.now(UTC).isoformat(),
        "notes": notes,
    }
    if split.cut is not None:
        out["cut"] = _iso(split.cut)
    if any(dataset.dropped.values()):
        out["dropped_events"] = dataset.dropped
    return out


def _methods_time(results: Mapping[str, Mapping[str, Any]]) -> float:
    return sum(sum(r.get("timings_s", {}).values()) for r in results.values())


def _production_settings(
    name: str, settings: Settings, config: EvaluationConfig
) -> tuple[float, bool]:
    if name == "content_mean":
        if not any(math.isinf(h) for h in settings.half_lives):
            raise EvaluationError("content_mean needs an infinite half-life in DRIFTREC_HALF_LIVES")
        return math.inf, False
    if name == "content_decayed":
        return config.decayed_half_life_s, False
    return settings.blend_half_life, True


class _workdir:
    """The configured working directory, or a temporary one removed afterwards."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    def __enter__(self) -> Path:
        if self.path is not None:
            self.path.mkdir(parents=True, exist_ok=True)
            return self.path
        self._tmp = tempfile.TemporaryDirectory(prefix="driftrec-eval-")
        return Path(self._tmp.name)

    def __exit__(self, *exc: object) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


def has_trainer() -> bool:
    return load_trainer() is not None
