"""``python -m bench.reindex_window``: recommendation latency at a fixed rate while
`driftrec reindex --full` runs beside the server, second by second (the soak's reindex window,
isolated and shorter, for A/B comparisons of a change).

The server (`driftrec serve --workers 2`) serves the benchmark catalogue; `bench.loadgen` sends
recommendations open-loop at ``--rate`` for the whole run; the job starts after ``--lead``
seconds. Prints one JSON line: the job's seconds, p50/p99 in the ``--lead`` seconds before it
and while it ran, and how many requests took over ``--slow-ms`` in each second from its start.
``--job-env NAME=VALUE`` (repeatable) sets the job's environment only, e.g.
``DRIFTREC_JOB_CPU_SHARE=0.1``. Not part of `make test`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.data import REPO_ROOT, build_catalogue
from bench.server import DRIFTREC, Server, base_env


def measure(size: int, rate: float, lead: float, slow_ms: float, job_env: dict[str, str]) -> dict:
    catalogue = build_catalogue(size, progress=False)
    env = base_env(catalogue.env())
    timeline = Path(tempfile.mkdtemp()) / "timeline.npy"
    with Server(catalogue.env(), name="reindex-window") as server:
        server.load("recommendations", items=size, duration=4)  # every worker loads everything
        argv = server.loadgen_argv(
            "recommendations", items=size, duration=lead + 40, rate=rate, timeline=timeline
        )
        load = subprocess.Popen(
            argv,
            env=env,
            stdout=subprocess.DEVNULL,
            cwd=REPO_ROOT,
        )
        time.sleep(lead)
        started = time.time()
        subprocess.run(
            [DRIFTREC, "reindex", "--full"], env={**env, **job_env}, capture_output=True, check=True
        )
        ended = time.time()
        load.wait()
    rows = np.load(timeline)  # (wall time sent, latency s, ok)
    sent, latency_ms = rows[:, 0], rows[:, 1] * 1000

    def percentiles(mask: np.ndarray) -> dict[str, float]:
        return {
            "requests": int(mask.sum()),
            "p50_ms": round(float(np.percentile(latency_ms[mask], 50)), 1),
            "p99_ms": round(float(np.percentile(latency_ms[mask], 99)), 1),
        }

    seconds = int(np.ceil(ended - started)) + 1
    slow = sent[latency_ms > slow_ms] - started
    return {
        "job_s": round(ended - started, 1),
        "before": percentiles((sent >= started - lead) & (sent < started)),
        "during": percentiles((sent >= started) & (sent <= ended)),
        f"over_{slow_ms:g}ms_by_second": np.histogram(slow, bins=np.arange(seconds + 1))[
            0
        ].tolist(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=300.0, help="recommendations/s in all")
    parser.add_argument("--lead", type=float, default=10.0)
    parser.add_argument("--slow-ms", type=float, default=30.0)
    parser.add_argument("--job-env", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args()
    job_env = dict(pair.split("=", 1) for pair in args.job_env)
    result = measure(args.size, args.rate, args.lead, args.slow_ms, job_env)
    print(json.dumps({"rate": args.rate, "job_env": job_env, **result}))


if __name__ == "__main__":
    main()
