"""What else the machine did while a benchmark ran: the host's steal time and the CPU time of
processes outside the benchmark, sampled on threads, so that a slow second can be put down to
a neighbour or to the service.

On the benchmark VMs the machine's own RabbitMQ broker starts an Erlang VM every ~61 s, a third
of a second of CPU on two cores: requests that arrive then wait for a worker (README, Soak run).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Collection
from typing import Any

import numpy as np

from bench.loadgen import windows
from indexer.pacing import machine_cpu_ticks, machine_steal_ticks

#: How often steal time is sampled (attributed to slow seconds).
STEAL_EVERY_S = 0.25
#: How often the CPU time of processes outside the benchmark is sampled: a scan of /proc,
#: ~2-3 ms for the ~130 processes of the benchmark VM.
OTHERS_EVERY_S = 0.5
#: Other processes' CPU in a second is shown from this much: per second the figure is only good
#: to ~60 ms either way (ticks against finer process times, samples 0.5 s apart).
OTHERS_SHOWN_MS = 100.0
#: How often the server's accept queue is sampled (the most waiting per slow second); a read of
#: /proc/net/tcp costs ~2 ms of CPU here, so not much more often.
BACKLOG_EVERY_S = 0.25
#: How often the kernel's I/O pressure (PSI) is sampled.
IO_STALL_EVERY_S = 0.25
#: Time some task spent stalled on I/O in a second is shown from this much.
IO_STALL_SHOWN_MS = 10.0
#: Processes outside the benchmark's tree that work for it: the PostgreSQL server's backends
#: (a PostgreSQL run's own database work is not a neighbour's).
SERVICE_PROCESSES = frozenset({"postgres"})


class Sampler:
    """``read()`` every ``every_s`` seconds on a thread, kept with the wall-clock time."""

    def __init__(self, read: Callable[[], int | None], every_s: float, name: str) -> None:
        self.samples: list[tuple[float, int]] = []
        self._read, self._every_s = read, every_s
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            value = self._read()
            if value is not None:
                self.samples.append((time.time(), value))
            if self._stopped.wait(self._every_s):
                return

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)


def steal_sampler() -> Sampler:
    """The hypervisor's steal time (/proc/stat: time this VM's CPUs were ready to run but the
    host ran something else), every `STEAL_EVERY_S`: a slow second with steal in it is the
    host's, not ours."""
    return Sampler(machine_steal_ticks, STEAL_EVERY_S, "steal-sampler")


def io_stall_sampler() -> Sampler:
    """The kernel's I/O pressure (``/proc/pressure/io``, "some": wall time during which at
    least one task waited for I/O, in microseconds), every `IO_STALL_EVERY_S`: a slow second
    in which a commit's sync waited on the disk shows it."""
    return Sampler(io_stall_us, IO_STALL_EVERY_S, "io-stall-sampler")


def io_stall_us(path: str = "/proc/pressure/io") -> int | None:
    """The cumulative "some" stall total of ``path`` (None where PSI is missing)."""
    try:
        with open(path) as handle:
            for line in handle:
                if line.startswith("some "):
                    return int(line.rsplit("total=", 1)[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def counted_ms(sampler: Sampler, start: float, end: float, unit_ms: float) -> float | None:
    """What a sampler of a cumulative count counted between wall-clock ``start`` and ``end``,
    in milliseconds (``unit_ms`` a count), from the samples nearest to each (None without two
    distinct ones)."""
    if not sampler.samples:
        return None
    first = min(sampler.samples, key=lambda sample: abs(sample[0] - start))
    last = min(sampler.samples, key=lambda sample: abs(sample[0] - end))
    if last[0] <= first[0]:
        return None
    return (last[1] - first[1]) * unit_ms


def ticks_ms(sampler: Sampler, start: float, end: float) -> float | None:
    """CPU milliseconds (all CPUs together) that a sampler of cumulative ticks (steal, other
    processes) counted between wall-clock ``start`` and ``end`` (`counted_ms`)."""
    return counted_ms(sampler, start, end, 1000 / os.sysconf("SC_CLK_TCK"))


def others_sampler() -> Sampler:
    """`outside_cpu_ticks` of this process's tree every `OTHERS_EVERY_S`: a slow second in
    which other processes on the machine (its own services, say) took the CPU is theirs."""
    root = os.getpid()
    return Sampler(lambda: outside_cpu_ticks(root), OTHERS_EVERY_S, "others-sampler")


def outside_cpu_ticks(root: int, service: Collection[str] = SERVICE_PROCESSES) -> int | None:
    """CPU ticks since boot of every process outside ``root`` and its descendants, and not
    named in ``service``: the machine's busy time, less steal, less the tree's own (each live
    process's user and system time with its reaped children's, so a process of the tree that
    exits moves its time to its parent), less the service processes'. Approximate to a tick or
    two a sample: /proc/stat counts in ticks, processes in finer units. None where /proc cannot
    be read."""
    busy, steal = machine_cpu_ticks(), machine_steal_ticks()
    if busy is None or steal is None:
        return None
    children: dict[int, list[int]] = {}
    ticks: dict[int, int] = {}
    serving = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as stat:
                name, fields = stat.read().split(" (", 1)[1].rsplit(")", 1)
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        fields = fields.split()
        pid = int(entry.name)
        children.setdefault(int(fields[1]), []).append(pid)
        ticks[pid] = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
        if name in service:
            serving += ticks[pid]  # with reaped children: a backend that exits stays counted
    own, pending = 0, [root]
    while pending:
        pid = pending.pop()
        own += ticks.get(pid, 0)
        pending.extend(children.get(pid, ()))
    return busy[0] - steal - own - serving


def accept_queue_sampler(port: int) -> Sampler:
    """The server's accept queue (`listen_backlog`) every `BACKLOG_EVERY_S`."""
    return Sampler(lambda: listen_backlog(port), BACKLOG_EVERY_S, "backlog-sampler")


def listen_backlog(port: int) -> int | None:
    """Connections waiting in the accept queue of the socket listening on ``port`` (the
    receive-queue column of its LISTEN row in /proc/net/tcp): with sync workers, one per
    request that no worker has taken yet. None where it cannot be read.

    The kernel lists listening sockets first: reading stops at the first other row, before the
    thousands of connections in TIME_WAIT that a load of one connection per request leaves.
    """
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as rows:
                next(rows, None)  # the header
                for row in rows:
                    fields = row.split()
                    if fields[3] != "0A":
                        break
                    if int(fields[1].rsplit(":", 1)[1], 16) == port:
                        return int(fields[4].split(":")[1], 16)
        except OSError:
            continue
    return None


def most_waiting(sampler: Sampler, start: float, end: float) -> int | None:
    """The longest accept queue sampled between wall-clock ``start`` and ``end``."""
    values = [value for at, value in sampler.samples if start <= at < end]
    return max(values) if values else None


def slow_seconds(timeline: np.ndarray, limit_ms: float) -> list[dict[str, Any]]:
    """The seconds of a run (by send time, from its first request) whose p99 exceeds
    ``limit_ms``: where a slow run's time went (episodes of a second or two, or spread thin).
    ``timeline`` rows are `bench.loadgen --timeline`'s (send time, latency s, ok)."""
    if len(timeline) == 0:
        return []
    relative = np.column_stack([timeline[:, 0] - timeline[0, 0], timeline[:, 1:3]])
    return [
        second
        for second in windows(relative, 1.0)
        if second["requests"] and second["p99_ms"] > limit_ms
    ]


def beside(second: dict[str, Any]) -> list[str]:
    """What else went on in a slow second (`MachineWatch.attribute`'s fields), in the reports'
    words: requests waiting for a worker, the host's steal, other processes' CPU and time stalled
    on I/O (the last two from their thresholds)."""
    parts = []
    if second.get("accept_queue") is not None:
        parts.append(f"up to {second['accept_queue']} waiting for a worker")
    if second.get("steal_ms"):
        parts.append(f"steal {second['steal_ms']:.0f} ms")
    if (second.get("others_ms") or 0) >= OTHERS_SHOWN_MS:
        parts.append(f"other processes {second['others_ms']:.0f} ms of CPU")
    if (second.get("io_stall_ms") or 0) >= IO_STALL_SHOWN_MS:
        parts.append(f"tasks stalled on I/O for {second['io_stall_ms']:.0f} ms")
    return parts


class MachineWatch:
    """The host's steal, other processes' CPU, the kernel's I/O pressure and the accept queue
    of the server on ``port``, sampled on threads from creation until `stop`."""

    def __init__(self, port: int) -> None:
        self.steal = steal_sampler()
        self.others = others_sampler()
        self.io_stall = io_stall_sampler()
        self.backlog = accept_queue_sampler(port)

    def stop(self) -> None:
        for sampler in (self.steal, self.others, self.io_stall, self.backlog):
            sampler.stop()

    def attribute(self, seconds: list[dict[str, Any]], origin: float) -> None:
        """Add ``steal_ms``, ``others_ms``, ``io_stall_ms`` and ``accept_queue`` (the most
        waiting) to each of ``seconds`` (`slow_seconds`' rows, whose ``start_s`` counts from
        wall-clock ``origin``)."""
        for second in seconds:
            at = origin + second["start_s"]
            second["steal_ms"] = ticks_ms(self.steal, at, at + 1.0)
            second["others_ms"] = ticks_ms(self.others, at, at + 1.0)
            second["io_stall_ms"] = counted_ms(self.io_stall, at, at + 1.0, 0.001)
            second["accept_queue"] = most_waiting(self.backlog, at, at + 1.0)
