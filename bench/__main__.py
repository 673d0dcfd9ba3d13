"""``python -m bench [--quick]``: every benchmark, one table, results in bench/results/.

Full: catalogues of 10k, 100k and 1M items, 30 s per serving point. ``--quick``: 10k and 100k,
5 s per point, smaller ingestion and embedding samples. Every figure is paired with a reference
measured in the same run (see the README's Benchmarks section for what each one means).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import Any

from bench.data import REPO_ROOT
from bench.report import RESULTS_DIR, render, write_results

log = logging.getLogger("bench")

SECTIONS = ("serving", "ingest", "embedding")


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = 0
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        pass
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO_ROOT
    ).stdout.strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(memory / 2**30, 1),
        "python": platform.python_version(),
        "load_average_at_start": os.getloadavg()[0],
        "commit": commit,
    }


def _command(argv: list[str]) -> str:
    """The command that reproduces this run: a make target, or the options it was given (a
    partial run's table must not read as the full one's)."""
    targets = {(): "make bench", ("--quick",): "make bench-quick"}
    return targets.get(tuple(argv), " ".join(["python -m bench", *argv]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="reduced run (a few minutes)")
    parser.add_argument("--only", choices=SECTIONS, action="append", help="run only these")
    parser.add_argument("--sizes", help="comma-separated catalogue sizes (overrides the default)")
    parser.add_argument("--duration", type=float, help="seconds per serving point")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr
    )
    for name in ("alembic", "sqlalchemy", "httpx", "sentence_transformers", "faiss"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

    quick = args.quick
    sizes = (
        [int(s) for s in args.sizes.split(",")]
        if args.sizes
        else ([10_000, 100_000] if quick else [10_000, 100_000, 1_000_000])
    )
    duration = args.duration or (5.0 if quick else 30.0)
    sections = args.only or list(SECTIONS)
    results: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": "quick" if quick else "full",
        "command": _command(sys.argv[1:] if argv is None else argv),
        "machine": machine(),
        "duration_s": duration,
        "concurrency": 8,
        "workers": 2,
    }
    began = time.perf_counter()
    if "serving" in sections:
        from bench.serving import run_size

        results["serving"] = []
        for size in sizes:
            log.info("serving size=%d", size)
            results["serving"].append(
                run_size(
                    size,
                    duration=duration,
                    warmup=3.0 if quick else 8.0,
                    full_reindex=size == max(sizes),
                    queries=200 if quick else 500,
                )
            )
            write_results(results)  # partial results survive an interrupted run
    if "ingest" in sections:
        from bench.ingest import run_ingest

        results["ingest"] = run_ingest(duration=duration, quick=quick)
        write_results(results)
    if "embedding" in sections:
        from bench.embedding import run_embedding

        results["embedding"] = run_embedding(quick=quick)
    results["elapsed_s"] = time.perf_counter() - began
    write_results(results)
    print(render(results))
    print(f"\nwritten: {RESULTS_DIR / 'latest.json'}, latest.md, scale.png")


if __name__ == "__main__":
    main()
