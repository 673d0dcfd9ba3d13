"""Embedding throughput: sentence-transformers (torch) against the ONNX Runtime backend.

Both on one thread (as each server worker and `driftrec reindex` run them), on the
ml-latest-small titles. Rounds alternate between the backends and the best round of each is
kept, so a burst of load from other processes on the machine does not decide the ratio.
Agreement: mean cosine of the two vectors of each title, and the overlap of each title's top-10
neighbours computed from either backend's vectors.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from bench.data import BENCH_DIR, MODEL, MOVIELENS


def _neighbours(vectors: np.ndarray, k: int = 10) -> np.ndarray:
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    return np.argpartition(-sims, k, axis=1)[:, :k]


def run_embedding(*, quick: bool) -> dict[str, Any]:
    from indexer.embedder import ONNX, TORCH, load_embedder
    from store.importing import movielens_items
    from store.items import embedding_text

    texts = [embedding_text(m.title, m.text) for m in movielens_items(MOVIELENS)]
    rounds, per_round = (2, 1000) if quick else (3, 3000)
    embedders = {
        name: load_embedder(MODEL, backend=name, threads=1, cache_dir=BENCH_DIR / "onnx")
        for name in (TORCH, ONNX)
    }
    for embedder in embedders.values():
        embedder.embed(texts[:64])  # warm up
    best = {name: 0.0 for name in embedders}
    rng = np.random.default_rng(0)
    for _ in range(rounds):
        sample = [texts[i] for i in rng.choice(len(texts), per_round, replace=False)]
        for name, embedder in embedders.items():
            started = time.perf_counter()
            embedder.embed(sample)
            best[name] = max(best[name], per_round / (time.perf_counter() - started))
    agreement_texts = texts[:2000] if quick else texts
    default = embedders[TORCH].embed(agreement_texts)
    fast = embedders[ONNX].embed(agreement_texts)
    cosine = float(np.mean(np.sum(default * fast, axis=1)))
    a, b = _neighbours(default), _neighbours(fast)
    overlap = float(np.mean([len(set(x) & set(y)) / 10 for x, y in zip(a, b, strict=True)]))
    speedup = best[ONNX] / best[TORCH]
    ok = speedup >= 2 and cosine >= 0.99 and overlap >= 0.9
    return {
        "titles": len(agreement_texts),
        "items_per_s": best,
        "speedup": speedup,
        "mean_cosine": cosine,
        "top10_overlap": overlap,
        "rows": [
            (
                "embedding",
                "onnx backend (1 thread)",
                f"{best[ONNX]:.0f} items/s; cosine {cosine:.5f}, top-10 overlap {overlap:.3f}",
                f"sentence-transformers {best[TORCH]:.0f} items/s",
                f"x{speedup:.2f}",
                ">= x2, cosine >= 0.99, overlap >= 0.9",
                "yes" if ok else "NO",
            )
        ],
    }
