"""Serving, recall, memory and reindex benchmarks on one synthetic catalogue size."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.data import Catalogue, build_catalogue
from bench.data import runtime as runtime_for
from bench.server import Server, handled

log = logging.getLogger(__name__)

ENDPOINTS = ("healthz", "recommendations", "similar", "search")
#: Each endpoint's route as the server's request log names it (`bench.server.handled`).
ROUTES = {
    "healthz": "/healthz",
    "recommendations": "/v1/users/<user_id>/recommendations",
    "similar": "/v1/items/<item_id>/similar",
    "search": "/v1/search",
}


def reindex(catalogue: Catalogue, *, full: bool) -> dict[str, Any]:
    """Build (``full``: always, from scratch: k-means too, not the previous index's centroids)
    and publish the index, then reindex again unchanged."""
    runtime = runtime_for(catalogue.env())
    try:
        started = time.perf_counter()
        first = runtime.reindex(full=full, retrain=full)
        build_s = time.perf_counter() - started
        started = time.perf_counter()
        again = runtime.reindex()
        unchanged_s = time.perf_counter() - started
        with runtime.db.read() as session:
            from store.versions import active_index_version

            active = active_index_version(session)
            assert active is not None
            path, kind = Path(active.path), active.kind
    finally:
        runtime.close()
    return {
        "build_s": build_s if first.rebuilt else None,
        "rebuilt": first.rebuilt,
        "unchanged_s": unchanged_s,
        "unchanged_embedded": again.embedded,
        "unchanged_rebuilt": again.rebuilt,
        "index_path": str(path),
        "index_kind": kind,
        "index_mib": path.stat().st_size / 2**20,
    }


def user_queries(catalogue: Catalogue, n: int, seed: int = 7) -> list[tuple[np.ndarray, set[int]]]:
    """(query vector, seen item ids) for ``n`` users, as the recommender computes them."""
    from interest.profile import state_from_row
    from store.events import get_profile, seen_item_ids, user_ids

    runtime = runtime_for(catalogue.env())
    rng = np.random.default_rng(seed)
    encoder = runtime.encoders.get(None)
    out = []
    try:
        with runtime.db.read() as session:
            names = [f"u{u}" for u in rng.choice(len(catalogue.user_events), n, replace=False)]
            ids = user_ids(session, names)
            for name in names:
                state = state_from_row(get_profile(session, ids[name]))
                query = encoder.encode([state], time.time())[0]
                out.append((query, seen_item_ids(session, ids[name])))
    finally:
        runtime.close()
    return out


def raw_search(index_path: str, queries: list[tuple[np.ndarray, set[int]]]) -> dict[str, Any]:
    """In-process reference on one thread: FAISS alone, and `VectorIndex.search` (exclusions)."""
    import faiss

    from indexer.vector_index import VectorIndex

    faiss.omp_set_num_threads(1)
    index = VectorIndex.load(Path(index_path), mmap=True)
    for query, seen in queries[:20]:  # warm the pages
        index.search(query, 10, exclude=seen)

    def timed(call) -> np.ndarray:  # type: ignore[no-untyped-def]
        times = []
        for query, seen in queries:
            started = time.perf_counter()
            call(query, seen)
            times.append(time.perf_counter() - started)
        return np.array(times) * 1000

    params = index._params(())  # noqa: SLF001 (the reference is FAISS itself, no wrapper)
    plain = timed(lambda q, _s: index._index.search(q.reshape(1, -1), 10, params=params))  # noqa: SLF001
    wrapped = timed(lambda q, s: index.search(q, 10, exclude=s))
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    return {
        "faiss_p50_ms": float(np.percentile(plain, 50)),
        "faiss_p99_ms": float(np.percentile(plain, 99)),
        "faiss_qps_1thread": float(1000 / plain.mean()),
        "search_p50_ms": float(np.percentile(wrapped, 50)),
        "search_p99_ms": float(np.percentile(wrapped, 99)),
        "search_qps_1thread": float(1000 / wrapped.mean()),
    }


def recall(
    catalogue: Catalogue, index_path: str, queries: list[tuple[np.ndarray, set[int]]], k: int = 10
) -> dict[str, Any]:
    """recall@k of the published index against exact search, seen items excluded in both."""
    from indexer.vector_index import VectorIndex

    index = VectorIndex.load(Path(index_path), mmap=True)
    matrix = np.stack([q for q, _ in queries]).astype(np.float32)
    scores = np.empty((len(queries), len(catalogue.vectors)), dtype=np.float32)
    for start in range(0, len(catalogue.vectors), 100_000):
        block = catalogue.vectors[start : start + 100_000]
        scores[:, start : start + len(block)] = matrix @ block.T
    found = []
    for row, (query, seen) in enumerate(queries):
        if seen:
            scores[row, np.fromiter(seen, dtype=np.int64) - 1] = -np.inf
        exact = set((np.argpartition(-scores[row], k)[:k] + 1).tolist())
        approx = {hit.item_id for hit in index.search(query, k, exclude=seen)}
        found.append(len(exact & approx) / k)
    return {"recall_at_10": float(np.mean(found)), "recall_min": float(np.min(found))}


def serve(catalogue: Catalogue, *, duration: float, warmup: float) -> dict[str, Any]:
    """QPS, p50, p99 and errors per endpoint under `driftrec serve --workers 2`, plus memory."""
    out: dict[str, Any] = {}
    with Server(catalogue.env(), name=f"serve-{catalogue.size}") as server:
        for mode in ("search", "recommendations", "similar"):  # every worker loads everything
            server.load(mode, items=catalogue.size, duration=warmup, concurrency=4, seed=99)
        out["auth"] = "bearer key" if server.token else "disabled"
        measured_from = server.log_size()  # the warm-up's lines left out
        out.update(server.load_in_turns(ENDPOINTS, items=catalogue.size, duration=duration))
        log_text = server.log_since(measured_from)
        for mode in ENDPOINTS:
            out[mode].update(handling_figures(log_text, ROUTES[mode]))
            log.info("bench served size=%d %s", catalogue.size, out[mode])
        out["memory"] = server.memory()
    return out


def handling_figures(log_text: str, route: str) -> dict[str, float]:
    """p50 and p99 of the server's own time for the requests to ``route`` in ``log_text``
    (`bench.server.handled`): against the client's latency, what the requests spent waiting
    for a worker, the connection and the parse rather than being handled."""
    ms = np.array([duration for _, duration in handled(log_text, route)])
    if not len(ms):
        return {}
    return {
        "handler_p50_ms": float(np.percentile(ms, 50)),
        "handler_p99_ms": float(np.percentile(ms, 99)),
    }


def run_size(
    size: int, *, duration: float, warmup: float, full_reindex: bool, queries: int
) -> dict[str, Any]:
    started = time.perf_counter()
    catalogue = build_catalogue(size, progress=False)
    result: dict[str, Any] = {"size": size, "prepare_s": time.perf_counter() - started}
    result["reindex"] = reindex(catalogue, full=full_reindex)
    path = result["reindex"]["index_path"]
    sample = user_queries(catalogue, queries)
    result["raw"] = raw_search(path, sample)
    result["recall"] = recall(catalogue, path, sample)
    result["serve"] = serve(catalogue, duration=duration, warmup=warmup)
    return result
