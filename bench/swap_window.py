"""``python -m bench.swap_window``: recommendation latency while the server swaps index versions.

Isolates what a published version costs a running server (each worker verifying the new file's
checksum, mapping it, its first searches), without the job that builds one: a second version
row is added for a copy of the benchmark catalogue's active index file, and the active version
is flipped between the two every ``--every`` seconds while `bench.loadgen` sends
recommendations open-loop at ``--rate``. Prints one JSON line: p99 before the first flip, and
per flip the p99, the maximum and the requests over ``--slow-ms`` until the next one. The
catalogue is left as it was (the row and the copy are removed). Not part of `make test`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.data import REPO_ROOT, build_catalogue
from bench.server import Server, base_env


def measure(size: int, rate: float, flips: int, every: float, slow_ms: float) -> dict:
    from store.db import Database
    from store.models import IndexVersion
    from store.versions import activate_index_version, active_index_version, add_index_version

    catalogue = build_catalogue(size, progress=False)
    db = Database(catalogue.database_url)
    with db.read() as session:
        original = active_index_version(session)
        assert original is not None, "reindex the benchmark catalogue first (make bench)"
        copy = Path(original.path).with_name("index-swap-window-copy.faiss")
        shutil.copyfile(original.path, copy)
        os.sync()  # written out now, not by the kernel during the measurement
        twin = IndexVersion(
            path=str(copy),
            checksum=original.checksum,
            item_count=original.item_count,
            kind=original.kind,
            embedder_model=original.embedder_model,
            model_version_id=original.model_version_id,
            fingerprint=f"{original.fingerprint}-swap-window",
            catalogue_revision=original.catalogue_revision,
            build_spec=original.build_spec,
        )
    with db.write() as session:
        twin_id = add_index_version(session, twin, activate=False).id
    timeline = Path(tempfile.mkdtemp()) / "timeline.npy"
    flipped_at: list[float] = []
    try:
        with Server(catalogue.env(), name="swap-window") as server:
            server.load("recommendations", items=size, duration=4)  # every worker loads all
            lead = 10.0
            argv = server.loadgen_argv(
                "recommendations",
                items=size,
                duration=lead + flips * every,
                rate=rate,
                timeline=timeline,
            )
            load = subprocess.Popen(
                argv,
                env=base_env({}),
                stdout=subprocess.DEVNULL,
                cwd=REPO_ROOT,
            )
            time.sleep(lead)
            for number in range(flips):
                with db.write() as session:
                    activate_index_version(session, original.id if number % 2 else twin_id)
                flipped_at.append(time.time())
                time.sleep(every)
            load.wait()
    finally:
        with db.write() as session:
            activate_index_version(session, original.id)
            session.delete(session.get(IndexVersion, twin_id))
        db.dispose()
        copy.unlink(missing_ok=True)
    rows = np.load(timeline)  # (wall time sent, latency s, ok)
    sent, latency_ms = rows[:, 0], rows[:, 1] * 1000
    before = (sent < flipped_at[0]) & (sent > sent[0] + 2)
    per_flip = []
    for at in flipped_at:
        window = latency_ms[(sent >= at) & (sent < at + every)]
        per_flip.append(
            {
                "p99_ms": round(float(np.percentile(window, 99)), 1),
                "max_ms": round(float(window.max()), 1),
                f"over_{slow_ms:g}ms": int((window > slow_ms).sum()),
            }
        )
    return {
        "before_p99_ms": round(float(np.percentile(latency_ms[before], 99)), 1),
        "flips": per_flip,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--rate", type=float, default=150.0, help="recommendations/s in all")
    parser.add_argument("--flips", type=int, default=4)
    parser.add_argument("--every", type=float, default=14.0, help="seconds between flips")
    parser.add_argument("--slow-ms", type=float, default=30.0)
    args = parser.parse_args()
    result = measure(args.size, args.rate, args.flips, args.every, args.slow_ms)
    print(json.dumps({"size": args.size, "rate": args.rate, **result}))


if __name__ == "__main__":
    main()
