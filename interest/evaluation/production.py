"""Methods that run through the production code: a temporary database, the real `Runtime`.

The database holds exactly the training events; profiles come from `Runtime.rebuild_profiles`
(the same fold as ingest), the FAISS index from `Runtime.reindex`, rankings from
`Recommender.for_user`, and replayed events go through `Runtime.ingest`. Each method works on
its own copy of one prepared database, so methods (and a replay's ingests) cannot affect each
other.
"""

from __future__ import annotations

import importlib
import logging
import math
import sqlite3
import time
from collections.abc import Callable, Mapping
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from interest.evaluation.data import Dataset
from interest.evaluation.embedding_cache import EmbeddingCache
from interest.evaluation.errors import EvaluationError
from interest.evaluation.ranking import Ranked
from interest.evaluation.split import Split
from interest.ingest import EventInput
from store.db import Database
from store.importing import import_events, import_items
from store.migrate import upgrade
from store.settings import Settings

log = logging.getLogger(__name__)

#: Replayed events are ingested in chunks in which no user appears twice: a user's ranking
#: depends only on their own profile and seen items, so this equals one ingest per event.
REPLAY_CHUNK = 256
DB_FILE = "driftrec.db"


@dataclass
class ProductionRun:
    ranked: Ranked
    settings: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


class RecommenderLike(Protocol):
    def for_user(self, user_external_id: str, k: int, **kwargs: Any) -> Any: ...


class RuntimeLike(Protocol):
    """What the harness needs of `service.runtime.Runtime` (injected: interest never imports
    service)."""

    db: Database
    recommender: RecommenderLike

    def reindex(self, *, full: bool = False, progress: bool = False) -> Any: ...

    def rebuild_profiles(self, *, progress: bool = False) -> int: ...

    def ingest(self, events: Any) -> Any: ...

    def close(self) -> None: ...


RuntimeFactory = Callable[[Settings], RuntimeLike]


def load_trainer() -> Callable[..., int] | None:
    """`interest.train.train` when the training module exists, else None."""
    try:
        module = importlib.import_module("interest.train")
    except ModuleNotFoundError as exc:
        if exc.name != "interest.train":
            raise
        return None
    return getattr(module, "train", None)


def _settings_for(base: Settings, data_dir: Path, **changes: object) -> Settings:
    return base.replace(
        data_dir=data_dir, database_url=f"sqlite:///{data_dir / DB_FILE}", **changes
    )


def _copy_sqlite(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(source)) as src, closing(sqlite3.connect(target)) as dst:
        src.backup(dst)


class ProductionBench:
    """Prepares the shared database once, then runs each production-path method on a copy."""

    def __init__(
        self,
        dataset: Dataset,
        split: Split,
        protocol: str,
        settings: Settings,
        runtime_factory: RuntimeFactory,
        workdir: Path,
        *,
        cache: EmbeddingCache | None = None,
        retrieve: int = 20,
        k: int = 10,
        progress: bool = False,
    ) -> None:
        self.dataset = dataset
        self.split = split
        self.protocol = protocol
        self.base_settings = settings
        self.runtime_factory = runtime_factory
        self.workdir = workdir
        self.cache = cache
        self.retrieve = retrieve
        self.k = k
        self.progress = progress
        self.item_code = {item.external_id: n for n, item in enumerate(dataset.items)}
        self._base_db: Path | None = None
        self.timings: dict[str, float] = {}

    # -- the shared database ---------------------------------------------------------------
    def prepare(self) -> dict[str, float]:
        """Import items and training events, embed (cache first), index, build profiles."""
        data_dir = self.workdir / "base"
        settings = _settings_for(self.base_settings, data_dir)
        clock = time.perf_counter()
        upgrade(settings.database_url)
        db = Database(settings.database_url)
        try:
            import_items(db, self.dataset.items)
            train_events = [self.dataset.events[row] for row in self.split.train.rows]
            stats = import_events(db, train_events)
            if stats.accepted != len(train_events):
                raise EvaluationError(
                    f"imported {stats.accepted} of {len(train_events)} training events "
                    f"(duplicates {stats.duplicates}, rejected {stats.rejected})"
                )
            self.timings["import_s"] = time.perf_counter() - clock
            clock = time.perf_counter()
            cached = self.cache.prefill(db) if self.cache is not None else 0
            runtime = self.runtime_factory(settings)
            try:
                result = runtime.reindex(progress=self.progress)
                self.timings["embed_and_index_s"] = time.perf_counter() - clock
                self.timings["embedded_items"] = float(getattr(result, "embedded", 0))
                self.timings["cached_items"] = float(cached)
                if self.cache is not None:
                    self.cache.save_from(db)
                clock = time.perf_counter()
                runtime.rebuild_profiles(progress=self.progress)
                self.timings["profiles_s"] = time.perf_counter() - clock
            finally:
                runtime.close()
        finally:
            db.dispose()
        self._base_db = data_dir / DB_FILE
        return self.timings

    def _runtime(self, name: str, **changes: object) -> RuntimeLike:
        if self._base_db is None:
            self.prepare()
        assert self._base_db is not None
        data_dir = self.workdir / name
        _copy_sqlite(self._base_db, data_dir / DB_FILE)
        return self.runtime_factory(_settings_for(self.base_settings, data_dir, **changes))

    # -- methods ---------------------------------------------------------------------------
    def run(
        self,
        name: str,
        *,
        blend_half_life: float,
        train: bool,
        train_overrides: Mapping[str, object] | None = None,
    ) -> ProductionRun:
        """Rank every case with the plain blend at ``blend_half_life`` or a trained model
        (``train_overrides`` change fields of `interest.train.TrainConfig`, for ablations)."""
        settings: dict[str, Any] = {"blend_half_life_s": _json_float(blend_half_life)}
        timings: dict[str, float] = {}
        runtime = self._runtime(name, blend_half_life=blend_half_life)
        try:
            if train:
                trainer = load_trainer()
                if trainer is None:
                    settings["model"] = "plain blend (interest.train not available yet)"
                else:
                    clock = time.perf_counter()
                    kwargs: dict[str, Any] = {"progress": self.progress}
                    if train_overrides:
                        from interest.train import TrainConfig

                        kwargs["config"] = TrainConfig(**train_overrides)  # type: ignore[arg-type]
                        settings["train_overrides"] = {
                            k: list(v) if isinstance(v, tuple) else v
                            for k, v in train_overrides.items()
                        }
                    settings["model_version_id"] = trainer(runtime, **kwargs)
                    timings["train_s"] = time.perf_counter() - clock
                    clock = time.perf_counter()
                    runtime.reindex(progress=self.progress)
                    timings["reindex_s"] = time.perf_counter() - clock
                    settings["model"] = "trained (interest.train)"
            else:
                settings["model"] = "plain blend"
            clock = time.perf_counter()
            if self.protocol == "replay":
                ranked = self._replay(runtime, name)
            else:
                ranked = self._rank_static(runtime, name)
            timings["rank_s"] = time.perf_counter() - clock
        finally:
            runtime.close()
        return ProductionRun(ranked, settings, timings)

    def _rank_one(self, runtime: RuntimeLike, case: int) -> tuple[float, np.ndarray]:
        cases = self.split.cases
        user = self.dataset.user_ids[int(cases.users[case])]
        recommendation = runtime.recommender.for_user(
            user, self.retrieve, exclude_seen=True, now=float(cases.target_times[case])
        )
        codes = [self.item_code[item.id] for item in recommendation.items]
        target = int(cases.targets[case])
        rank = float(codes.index(target) + 1) if target in codes else math.inf
        return rank, np.array(codes[: self.k], dtype=np.int64)

    def _rank_static(self, runtime: RuntimeLike, name: str) -> Ranked:
        n = len(self.split.cases)
        ranks = np.empty(n, dtype=np.float64)
        top: list[np.ndarray] = []
        for case in tqdm(range(n), desc=name, unit="user", disable=not self.progress):
            ranks[case], codes = self._rank_one(runtime, case)
            top.append(codes)
        return Ranked(ranks, top)

    def _replay(self, runtime: RuntimeLike, name: str) -> Ranked:
        cases = self.split.cases
        n = len(cases)
        ranks = np.empty(n, dtype=np.float64)
        top: list[np.ndarray] = []
        bar = tqdm(total=n, desc=f"{name} replay", unit="event", disable=not self.progress)
        start = 0
        while start < n:
            stop, users = start, set()
            while stop < n and stop - start < REPLAY_CHUNK and int(cases.users[stop]) not in users:
                users.add(int(cases.users[stop]))
                stop += 1
            for case in range(start, stop):
                ranks[case], codes = self._rank_one(runtime, case)
                top.append(codes)
            events = [self._event_input(int(cases.target_rows[c])) for c in range(start, stop)]
            result = runtime.ingest(events)
            if result.accepted != len(events):
                raise EvaluationError(
                    f"replay ingest accepted {result.accepted} of {len(events)} events: "
                    f"{result.rejected[:3]}"
                )
            bar.update(stop - start)
            start = stop
        bar.close()
        return Ranked(ranks, top)

    def _event_input(self, row: int) -> EventInput:
        record = self.dataset.events[row]
        return EventInput(
            event_id=record.event_id,
            user_id=record.user_id,
            item_id=record.item_id,
            type=record.type,
            timestamp=record.timestamp,
            value=record.value,
        )


def _json_float(value: float) -> float | str:
    return "inf" if math.isinf(value) else value
