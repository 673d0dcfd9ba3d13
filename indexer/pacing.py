"""Pacing for background jobs: yield the machine to busy neighbours between chunks of work.

A job's priority (`service.job_priority`) decides who gets a CPU, not what the job does to the
caches and memory bandwidth the server shares with it: on the 2-core benchmark machine a
reindex at the lowest priority still slowed a server at 70% load enough to queue requests for
seconds. So a paced job, at each chunk boundary (`pause`), looks at how busy the rest of the
machine was since the last boundary and, if other processes used more than `BUSY_CORES`, sleeps
long enough to keep its own work to ``share`` of the time, like PostgreSQL's cost-based vacuum
delay. On an idle machine it never sleeps. Jobs started by the `driftrec` command are paced at
``DRIFTREC_JOB_CPU_SHARE``; library calls (tests, a server's own work) are not.

While the machine is busy, a paced job's math libraries (BLAS, OpenMP, torch) also run on one
thread: a multi-threaded call takes every core at once, so each of its bursts competed with
every server worker, not one, and BLAS threads spin for a while after a call before they sleep.
(`driftrec reindex --full` of the 100k benchmark catalogue on an idle machine: 124% of a core,
add and calibrate on two threads.) On an idle machine the libraries keep their thread counts.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

#: Other processes using more than this many cores make a paced job sleep.
BUSY_CORES = 0.5
#: Boundaries closer together than this are not measured (/proc/stat counts in 10 ms ticks).
MIN_SLICE_S = 0.1
PROC_STAT = Path("/proc/stat")

_share = 1.0
_last: tuple[float, float, float, float] | None = None  # wall, own CPU, machine busy, total
_one_thread: Any = None  # the thread limits in force while the machine is busy (see module doc)
_torch_threads = 0  # torch's own thread count before it was limited (0: not limited)


def set_share(share: float) -> None:
    """Pace this process's job work at ``share`` (0 < share <= 1; 1 turns pacing off)."""
    global _share, _last
    _share = min(1.0, max(0.01, share))
    _last = None
    if _share >= 1.0:
        _single_threaded(False)


def pause() -> None:
    """A chunk boundary: sleep if the job's recent work competed with a busy machine."""
    global _last
    if _share >= 1.0:
        return
    now = _sample()
    if now is None:
        return
    if _last is None:
        _last = now
        return
    wall, own, busy, total = (a - b for a, b in zip(now, _last, strict=True))
    if wall < MIN_SLICE_S:
        return
    cores = os.cpu_count() or 1
    machine_cores = busy / total * cores if total > 0 else 0.0
    others = machine_cores - own / wall
    _single_threaded(others > BUSY_CORES)
    if others > BUSY_CORES:
        time.sleep(min(own * (1 / _share - 1), 5.0))
    _last = _sample()


def _single_threaded(on: bool) -> None:
    """Hold the loaded math libraries to one thread (``on``), or give back their counts."""
    global _one_thread, _torch_threads
    if on and _one_thread is None:
        from threadpoolctl import threadpool_limits

        _one_thread = threadpool_limits(limits=1)
        torch = sys.modules.get("torch")
        if torch is not None and torch.get_num_threads() > 1:
            _torch_threads = torch.get_num_threads()
            torch.set_num_threads(1)
    elif not on and _one_thread is not None:
        _one_thread.restore_original_limits()
        _one_thread = None
        torch = sys.modules.get("torch")
        if torch is not None and _torch_threads:
            torch.set_num_threads(_torch_threads)
        _torch_threads = 0


def _machine_cpu_fields() -> list[int] | None:
    """The whole machine's CPU ticks since boot, from /proc/stat's first line (None where it
    cannot be read): user, nice, system, idle, iowait, irq, softirq, steal."""
    try:
        return [int(x) for x in PROC_STAT.read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None


def machine_cpu_ticks() -> tuple[int, int] | None:
    """The whole machine's (busy, total) CPU ticks since boot (None where they cannot be
    read): idle and iowait are not busy, guest time is counted in user already."""
    fields = _machine_cpu_fields()
    if fields is None:
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields)
    return total - idle, total


def machine_steal_ticks() -> int | None:
    """Ticks the hypervisor ran something else while this VM's CPUs were ready (all CPUs),
    since boot (None where they cannot be read)."""
    fields = _machine_cpu_fields()
    return fields[7] if fields is not None and len(fields) > 7 else None


def _sample() -> tuple[float, float, float, float] | None:
    """(wall clock, this process's CPU seconds, machine busy ticks, machine total ticks)."""
    ticks = machine_cpu_ticks()
    if ticks is None:
        return None
    busy, total = ticks
    return time.monotonic(), time.process_time(), float(busy), float(total)
