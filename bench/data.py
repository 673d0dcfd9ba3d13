"""Benchmark data: catalogues of realistic vectors, users with event histories.

1M texts cannot be embedded in a benchmark run, so item vectors are sampled around the real
MiniLM embeddings of the MovieLens titles: each synthetic item is a blend of two (usually
related) real titles plus Gaussian noise, normalised. The result keeps the clustered, anisotropic
structure of real text embeddings, which uniform noise (that flatters no index) does not.

Catalogues are loaded through `store.importing.import_item_vectors` (the bulk vector import
path) into a database under ``var/bench`` and reused by later runs with the same parameters.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from store.items import ItemInput, content_hash

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO_ROOT / "var" / "bench"
MOVIELENS = (REPO_ROOT / ".." / "shared" / "datasets" / "ml-latest-small").resolve()
EVAL_CACHE = Path("/work/scratch/eval/cache")
MODEL = "bundled:all-MiniLM-L6-v2"
#: Bumped whenever the generator changes, so stale cached catalogues are rebuilt.
DATA_VERSION = 3
NOISE = 0.035  # per dimension: a sample keeps cosine ~0.8 with its blend of titles
N_USERS = 10_000
SEED = 20240601


def runtime(env: Mapping[str, str]):  # type: ignore[no-untyped-def]
    """A `Runtime` on a benchmark database (``env``: its DRIFTREC_DATABASE_URL and
    DRIFTREC_DATA_DIR), with the benchmark's model and this process's other settings."""
    from service.runtime import Runtime
    from store.settings import load_settings

    settings = load_settings({**os.environ, **env}, embedder_model=MODEL, log_level="WARNING")
    return Runtime(settings)


def title_vectors() -> tuple[list[ItemInput], np.ndarray]:
    """The ml-latest-small movies and their MiniLM vectors (from a cache, else embedded once)."""
    from store.importing import movielens_items

    movies = list(movielens_items(MOVIELENS))
    hashes = [content_hash(m.title, m.text) for m in movies]
    cache = BENCH_DIR / "movielens-titles.npz"
    found: dict[str, np.ndarray] = {}
    for path in [cache, *sorted(EVAL_CACHE.glob("embeddings-*.npz"))]:
        if path.is_file():
            with np.load(path, allow_pickle=False) as data:
                if str(data["model"]) == MODEL:
                    found.update(zip(data["hashes"].tolist(), data["vectors"], strict=True))
        if all(h in found for h in hashes):
            break
    missing = [i for i, h in enumerate(hashes) if h not in found]
    if missing:
        from indexer.embedder import load_embedder
        from store.items import embedding_text

        log.info("bench embedding titles=%d", len(missing))
        embedder = load_embedder(MODEL, threads=os.cpu_count() or 1)
        texts = [embedding_text(movies[i].title, movies[i].text) for i in missing]
        for i, vector in zip(missing, embedder.embed(texts), strict=True):
            found[hashes[i]] = vector
        BENCH_DIR.mkdir(parents=True, exist_ok=True)
        np.savez(
            cache,
            model=np.array(MODEL),
            hashes=np.array(hashes),
            vectors=np.stack([found[h] for h in hashes]).astype(np.float32),
        )
    return movies, np.stack([found[h] for h in hashes]).astype(np.float32)


def normalise(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def neighbours(centers: np.ndarray, k: int = 20) -> np.ndarray:
    """The ``k`` nearest titles of every title (itself first)."""
    out = np.empty((len(centers), k), dtype=np.int64)
    for start in range(0, len(centers), 2048):
        sims = centers[start : start + 2048] @ centers.T
        out[start : start + 2048] = np.argsort(-sims, axis=1)[:, :k]
    return out


def sample_items(
    centers: np.ndarray, near: np.ndarray, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` normalised vectors: w*title + (1-w)*neighbouring title + noise; (vectors, title)."""
    first = rng.integers(0, len(centers), n)
    second = near[first, rng.integers(1, near.shape[1], n)]
    weight = rng.uniform(0.55, 1.0, n).astype(np.float32)[:, None]
    vectors = np.empty((n, centers.shape[1]), dtype=np.float32)
    for start in range(0, n, 65_536):
        part = slice(start, start + 65_536)
        blend = weight[part] * centers[first[part]] + (1 - weight[part]) * centers[second[part]]
        noise = rng.standard_normal(blend.shape, dtype=np.float32) * NOISE
        vectors[part] = normalise(blend + noise)
    return vectors, first


@dataclass(frozen=True)
class Catalogue:
    size: int
    directory: Path
    database_url: str
    vectors: np.ndarray  # (size, dim), row i is item id i + 1
    user_events: list[np.ndarray]  # per user: item ids (internal) of their events

    def env(self) -> dict[str, str]:
        return {
            "DRIFTREC_DATABASE_URL": self.database_url,
            "DRIFTREC_DATA_DIR": str(self.directory),
        }


def _synthetic_item(i: int, movie: ItemInput) -> ItemInput:
    return ItemInput(
        external_id=f"b{i}",
        title=f"{movie.title} #{i}",
        text=movie.text,
        categories=list(movie.categories),
    )


def build_catalogue(size: int, *, progress: bool = True) -> Catalogue:
    """A migrated SQLite database with ``size`` items (vectors), N_USERS users and events, and
    profiles; reused when a previous run built the same one. No index is built here."""
    from service.runtime import Runtime
    from store.importing import EventRecord, import_events, import_item_vectors
    from store.migrate import upgrade
    from store.settings import load_settings

    directory = BENCH_DIR / f"catalogue-{size}"
    url = f"sqlite:///{directory / 'driftrec.db'}"
    marker = directory / f"ready-v{DATA_VERSION}"
    movies, centers = title_vectors()
    near = neighbours(centers)
    rng = np.random.default_rng(SEED + size)
    vectors, origin = sample_items(centers, near, size, rng)
    user_events = _user_histories(origin, near, rng)
    if marker.exists():
        upgrade(url)  # a cached catalogue follows later migrations
        return Catalogue(size, directory, url, vectors, user_events)

    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    upgrade(url)
    settings = load_settings(
        {}, database_url=url, data_dir=directory, embedder_model=MODEL, log_level="WARNING"
    )
    runtime = Runtime(settings)
    try:
        started = time.perf_counter()
        items = (_synthetic_item(i + 1, movies[origin[i]]) for i in range(size))
        import_item_vectors(runtime.db, items, vectors, MODEL, progress=progress)
        log.info("bench items loaded n=%d s=%.1f", size, time.perf_counter() - started)
        base = datetime(2024, 1, 1, tzinfo=UTC).timestamp()
        records = (
            EventRecord(
                event_id=f"u{u}-{n}",
                user_id=f"u{u}",
                item_id=f"b{item}",
                type="view" if n % 3 else "click",
                value=None,
                timestamp=datetime.fromtimestamp(base + 3600 * n + u, UTC),
            )
            for u, history in enumerate(user_events)
            for n, item in enumerate(history.tolist())
        )
        import_events(runtime.db, records, progress=progress)
        runtime.rebuild_profiles(progress=progress)
    finally:
        runtime.close()
    marker.touch()
    os.sync()  # flushed now, not by the kernel in the middle of the first measurement
    return Catalogue(size, directory, url, vectors, user_events)


def _user_histories(
    origin: np.ndarray, near: np.ndarray, rng: np.random.Generator
) -> list[np.ndarray]:
    """Each user likes 1-3 titles and interacts with 5-40 items made from neighbouring titles."""
    by_title: dict[int, np.ndarray] = {}
    order = np.argsort(origin, kind="stable")
    bounds = np.searchsorted(origin[order], np.arange(len(near) + 1))
    for title in range(len(near)):
        by_title[title] = order[bounds[title] : bounds[title + 1]] + 1  # internal ids
    histories = []
    for _ in range(N_USERS):
        tastes = near[rng.integers(0, len(near), rng.integers(1, 4))][:, :8].ravel()
        pool = np.concatenate([by_title[int(t)] for t in tastes])
        count = int(rng.integers(5, 41))
        if len(pool) == 0:
            pool = rng.integers(1, len(origin) + 1, count)
        histories.append(np.unique(rng.choice(pool, size=count, replace=True)))
    return histories
