"""Keep a server worker's long-lived objects out of Python's full garbage collections.

A full (generation 2) collection walks every container object the process holds: a worker
serving the 100k benchmark held enough of them (Flask, SQLAlchemy, numpy, FAISS wrappers, the
catalogue's caches) that each took 71-84 ms, and under load with events one ran about every
24 s per worker; every request queued at that worker meanwhile waited (max latency 112 ms,
p99 spikes in the soak's windows). `gc.freeze` moves the objects that exist at that moment
out of the collector's sight for good (they are never freed, which suits what lives as long
as the process). Frozen once after start-up and once more after the first requests built the
worker's caches and loaded its index, no collection above 2 ms was seen in the next minute
(60 s, 100k items, recommendations with event batches).
"""

from __future__ import annotations

import gc

#: Requests a worker serves before the second freeze (its caches and index are loaded by then).
WARM_UP_REQUESTS = 500


def freeze_after_start() -> None:
    """Collect what start-up left behind, then freeze the rest (before serving: the collection
    pauses nobody)."""
    gc.collect()
    gc.freeze()


class WarmUpFreeze:
    """Freezes once, after `WARM_UP_REQUESTS` requests (a freeze is a quick list splice; no
    collection is run while serving)."""

    def __init__(self, after: int = WARM_UP_REQUESTS) -> None:
        self._left = after

    def request_done(self) -> None:
        if self._left > 0:
            self._left -= 1
            if self._left == 0:
                gc.freeze()
