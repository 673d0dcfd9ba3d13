"""Wall-clock time per phase of a job, for its log line (``load=0.81s train=1.20s ...``)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class PhaseTimer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - began

    def __str__(self) -> str:
        return " ".join(f"{phase}={seconds:.2f}s" for phase, seconds in self.seconds.items())
