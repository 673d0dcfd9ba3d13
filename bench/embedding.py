"""Embedding throughput: float32 sentence-transformers (torch) against the faster backends,
OpenVINO (`openvino`, the default: bfloat16 products where the CPU has them natively),
bfloat16 autocast (`bf16`) and ONNX Runtime (`onnx`).

All on one thread (as each server worker runs them), on the ml-latest-small titles. Rounds
alternate between the backends and the best round of each is kept, so a burst of load from
other processes on the machine does not decide the ratio. Agreement with float32: mean cosine
of the two vectors of each title, and the overlap of each title's top-10 neighbours computed
from either backend's vectors.

The default backend and torch are also timed on article-length texts (`ARTICLE_CHARS`), where
the model reads its whole 256-token window of every text: what a catalogue of articles costs.

The bf16 backend is measured only where the CPU multiplies bfloat16 natively: emulated, it is
several times slower than float32 (never chosen there) and would take most of the run.

On a CPU with more than AVX2, also on AVX2 alone, emulated in a child process (`AVX2_ENV`):
float32 sentence-transformers against OpenVINO in float32, what the default runs on a
processor without AVX-512 (and so without native bfloat16). The emulation limits the
libraries' kernels, not the processor: caches, clock and the number of units stay this
machine's. On an AVX2-only CPU the rows above are that measurement, natively.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bench.data import BENCH_DIR, MODEL, MOVIELENS

TARGET = ">= x2, cosine >= 0.99, overlap >= 0.9"
#: Keeps each library's kernels to AVX2 in a child process: oneDNN's (OpenVINO's own and
#: torch's), MKL's (torch's float32 products) and torch's vectorised operators. ONNX Runtime
#: has no such switch, so the onnx backend is not measured there.
AVX2_ENV = {
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "ATEN_CPU_CAPABILITY": "avx2",
}


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
        has_native_bf16,
        load_embedder,
        resolve_backend,
    )

    # One thread, as in a server worker (`service.cli.SERVER_THREAD_ENV`): the tokenizers
    # library would otherwise encode each batch on every core (the AVX2 child inherits this).
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    texts = _titles()
    fast = (OPENVINO, BF16, ONNX) if has_native_bf16() else (OPENVINO, ONNX)
    embedders = {
        name: load_embedder(MODEL, backend=name, threads=1, cache_dir=BENCH_DIR / "embedders")
        for name in (TORCH, *fast)
    }
    best = _best_rates(embedders, texts, quick)
    agreement_texts = _agreement_texts(texts, quick)
    reference = embedders[TORCH].embed(agreement_texts)
    default = resolve_backend(AUTO, MODEL)
    result: dict[str, Any] = {
        "titles": len(agreement_texts),
        "default_backend": default,
        "items_per_s": best,
        "rows": [],
    }
    for name in fast:
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
    articles = _articles(texts, 50 if quick else 200)
    rates = _best_rates(
        {name: embedders[name] for name in (TORCH, default)}, articles, quick, len(articles)
    )
    cosine = float(
        np.mean(np.sum(embedders[TORCH].embed(articles) * embedders[default].embed(articles), 1))
    )
    result["articles"] = {"characters": ARTICLE_CHARS, "items_per_s": rates, "cosine": cosine}
    result["rows"].append(
        (
            "embedding",
            f"{default} backend on article-length texts ({ARTICLE_CHARS:,} characters, 1 thread)",
            f"{rates[default]:.0f} items/s; cosine {cosine:.5f}",
            f"torch float32 {rates[TORCH]:.0f} items/s",
            f"x{rates[default] / rates[TORCH]:.2f}",
            "",
            "-",
        )
    )
    avx2 = _avx2_emulated(quick)
    result["avx2_emulated"] = avx2
    if avx2 is not None:
        speedup = avx2["openvino"] / avx2["torch"]
        ok = speedup >= 2 and avx2["mean_cosine"] >= 0.99 and avx2["top10_overlap"] >= 0.9
        result["rows"].append(
            (
                "embedding",
                "openvino backend on AVX2 alone, emulated (1 thread, f32 products)",
                f"{avx2['openvino']:.0f} items/s; cosine {avx2['mean_cosine']:.5f}, "
                f"top-10 overlap {avx2['top10_overlap']:.3f}",
                f"torch float32 on AVX2 {avx2['torch']:.0f} items/s",
                f"x{speedup:.2f}",
                TARGET,
                "yes" if ok else "NO",
            )
        )
    return result


def _titles() -> list[str]:
    from store.importing import movielens_items
    from store.items import embedding_text

    return [embedding_text(m.title, m.text) for m in movielens_items(MOVIELENS)]


#: Article-length texts (`_articles`): what a catalogue of articles or long descriptions costs
#: to embed, the model reading its whole window (256 tokens) of every text.
ARTICLE_CHARS = 8_000


def _articles(titles: Sequence[str], count: int) -> list[str]:
    """``count`` texts of `ARTICLE_CHARS` characters, each ml-latest-small titles and genres
    strung together at random: not prose, but a tokenizer's and a model's work on long text."""
    rng = np.random.default_rng(7)
    articles = []
    for _ in range(count):
        parts: list[str] = []
        length = 0
        while length < ARTICLE_CHARS:
            parts.append(titles[int(rng.integers(len(titles)))])
            length += len(parts[-1]) + 1
        articles.append(" ".join(parts)[:ARTICLE_CHARS])
    return articles


def _agreement_texts(texts: list[str], quick: bool) -> list[str]:
    return texts[:2000] if quick else texts


def _best_rates(
    embedders: Mapping[str, Any],
    texts: Sequence[str],
    quick: bool,
    per_round: int | None = None,
) -> dict[str, float]:
    """Items per second of each embedder: the best of alternating rounds on random texts."""
    rounds, default_per_round = (2, 1000) if quick else (3, 3000)
    per_round = per_round or default_per_round
    for embedder in embedders.values():
        embedder.embed(list(texts[:64]))  # warm up
    best = {name: 0.0 for name in embedders}
    rng = np.random.default_rng(0)
    for _ in range(rounds):
        sample = [texts[i] for i in rng.choice(len(texts), per_round, replace=False)]
        for name, embedder in embedders.items():
            started = time.perf_counter()
            embedder.embed(sample)
            best[name] = max(best[name], per_round / (time.perf_counter() - started))
    return best


def _avx2_emulated(quick: bool) -> dict[str, float] | None:
    """`_avx2_child` in a process whose libraries load under `AVX2_ENV` (None if it fails, off
    x86, where those switches mean nothing, or on a CPU with nothing beyond AVX2 to hold back)."""
    import torch

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    if torch.backends.cpu.get_cpu_capability() in ("DEFAULT", "AVX2"):
        return None
    argv = [sys.executable, "-m", "bench.embedding", "--avx2-child", *(["--quick"] * quick)]
    done = subprocess.run(
        argv, env={**os.environ, **AVX2_ENV}, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        print(done.stderr[-2000:], file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def _avx2_child(quick: bool) -> dict[str, float]:
    """Float32 torch and OpenVINO in float32 (an AVX2 processor has no native bfloat16; the
    probe OpenVINO chooses by reads the processor, which the emulation does not change)."""
    from indexer.embedder import TORCH, OpenVinoEmbedder, load_embedder

    texts = _titles()
    cache = BENCH_DIR / "embedders"
    embedders = {
        TORCH: load_embedder(MODEL, backend=TORCH, threads=1, cache_dir=cache),
        "openvino": OpenVinoEmbedder(MODEL, cache_dir=cache, precision="f32"),
    }
    best = _best_rates(embedders, texts, quick)
    agreement_texts = _agreement_texts(texts, quick)
    cosine, overlap = _agreement(
        embedders[TORCH].embed(agreement_texts), embedders["openvino"].embed(agreement_texts)
    )
    return {**best, "mean_cosine": cosine, "top10_overlap": overlap}


if __name__ == "__main__":
    if "--avx2-child" in sys.argv:
        print(json.dumps(_avx2_child("--quick" in sys.argv)))
