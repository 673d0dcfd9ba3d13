"""Embedding throughput: float32 sentence-transformers (torch) against the faster backends,
OpenVINO (`openvino`, the default: bfloat16 products where the CPU has them natively),
bfloat16 autocast (`bf16`) and ONNX Runtime (`onnx`).

All on one thread (as each server worker runs them), on the ml-latest-small titles. Rounds
alternate between the backends and the best round of each is kept, so a burst of load from
other processes on the machine does not decide the ratio. Agreement with float32: mean cosine
of the two vectors of each title, and the overlap of each title's top-10 neighbours computed
from either backend's vectors.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from bench.data import BENCH_DIR, MODEL, MOVIELENS

TARGET = ">= x2, cosine >= 0.99, overlap >= 0.9"


def _neighbours(vectors: np.ndarray, k: int = 10) -> np.ndarray:
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    return np.argpartition(-sims, k, axis=1)[:, :k]


def _agreement(reference: np.ndarray, vectors: np.ndarray) -> tuple[float, float]:
    cosine = float(np.mean(np.sum(reference * vectors, axis=1)))
    a, b = _neighbours(reference), _neighbours(vectors)
    overlap = float(np.mean([len(set(x) & set(y)) / 10 for x, y in zip(a, b, strict=True)]))
    return cosine, overlap


def run_embedding(*, quick: bool) -> dict[str, Any]:
    from indexer.embedder import (
        AUTO,
        BF16,
        ONNX,
        OPENVINO,
        TORCH,
        load_embedder,
        resolve_backend,
    )
    from store.importing import movielens_items
    from store.items import embedding_text

    texts = [embedding_text(m.title, m.text) for m in movielens_items(MOVIELENS)]
    rounds, per_round = (2, 1000) if quick else (3, 3000)
    embedders = {
        name: load_embedder(MODEL, backend=name, threads=1, cache_dir=BENCH_DIR / "embedders")
        for name in (TORCH, OPENVINO, BF16, ONNX)
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
    reference = embedders[TORCH].embed(agreement_texts)
    default = resolve_backend(AUTO, MODEL)
    result: dict[str, Any] = {
        "titles": len(agreement_texts),
        "default_backend": default,
        "items_per_s": best,
        "rows": [],
    }
    for name in (OPENVINO, BF16, ONNX):
        cosine, overlap = _agreement(reference, embedders[name].embed(agreement_texts))
        speedup = best[name] / best[TORCH]
        ok = speedup >= 2 and cosine >= 0.99 and overlap >= 0.9
        result[name] = {"speedup": speedup, "mean_cosine": cosine, "top10_overlap": overlap}
        role = ", the default here" if name == default else ""
        precision = getattr(embedders[name], "precision", None)  # openvino's, by the CPU
        role = f", {precision} products{role}" if precision else role
        result["rows"].append(
            (
                "embedding",
                f"{name} backend (1 thread{role})",
                f"{best[name]:.0f} items/s; cosine {cosine:.5f}, top-10 overlap {overlap:.3f}",
                f"torch float32 {best[TORCH]:.0f} items/s",
                f"x{speedup:.2f}",
                TARGET,
                "yes" if ok else "NO",
            )
        )
    return result
