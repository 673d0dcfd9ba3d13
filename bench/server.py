"""Run `driftrec serve` as a separate process group and drive it with `bench.loadgen`."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.data import BENCH_DIR, N_USERS, REPO_ROOT
from bench.loadgen import latency_figures

DRIFTREC = str(Path(sys.executable).with_name("driftrec"))
#: How long a server's log lines may wait before they are written, with a margin (each process
#: writes what waited every 50 ms: `service.app.BackgroundLogHandler`).
LOG_LAG_S = 0.15
#: Turns per mode in `Server.load_in_turns`.
TURNS = 3


def handled(log_text: str, endpoint: str) -> list[tuple[float, float]]:
    """(wall-clock second, ms) of every request to ``endpoint`` (the route as the request log
    names it, e.g. ``/v1/events``) in a server's log: the server's own time for it (Flask's
    handling, not the wait for a free worker). `service.app`'s ``ts=`` is local time to the
    second."""
    line = re.compile(rf"ts=(\S+) .*endpoint={re.escape(endpoint)} status=\d+ duration_ms=([\d.]+)")
    out: list[tuple[float, float]] = []
    seconds: dict[str, float] = {}  # hundreds of lines share each stamp: parse it once
    for match in line.finditer(log_text):
        stamp = match.group(1)
        at = seconds.get(stamp)
        if at is None:
            at = seconds[stamp] = time.mktime(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S"))
        out.append((at, float(match.group(2))))
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def base_env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DRIFTREC_LOG_LEVEL": "INFO"})
    env.update(extra)
    return env


def create_key(env: dict[str, str]) -> str | None:
    """A read+write API key from `driftrec keys create`, or None where keys do not exist yet."""
    result = subprocess.run(
        [DRIFTREC, "keys", "create", "--name", "bench", "--scope", "read", "--scope", "write"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    lines = result.stdout.strip().splitlines()
    return lines[0].strip() if result.returncode == 0 and lines else None


class Server:
    """`driftrec serve --workers N` on a free loopback port; stopped on exit."""

    def __init__(self, env: dict[str, str], *, workers: int = 2, name: str = "server") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = base_env(env)
        self.token = create_key(self.env)
        if self.token is None:
            self.env["DRIFTREC_AUTH"] = "disabled"  # loopback only; keys not available
        self.workers = workers
        self.log_path = BENCH_DIR / "logs" / f"{name}-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")  # noqa: SIM115 (closed with the process)
        self.process = subprocess.Popen(
            [DRIFTREC, "serve", "--workers", str(self.workers), "--port", str(self.port)],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=REPO_ROOT,
        )
        log.close()
        self._wait_ready()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def log_size(self) -> int:
        """The server log's length once the lines logged so far are written."""
        time.sleep(LOG_LAG_S)
        return self.log_path.stat().st_size

    def log_since(self, offset: int = 0) -> str:
        """The server log from ``offset`` on, once the lines logged so far are written."""
        time.sleep(LOG_LAG_S)
        with open(self.log_path, encoding="utf-8", errors="replace") as handle:
            handle.seek(offset)
            return handle.read()

    def get(self, path: str, timeout: float = 120.0) -> tuple[int, dict[str, object]]:
        request = urllib.request.Request(self.url + path)
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return exc.code, {}

    def _wait_ready(self, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited; see {self.log_path}")
            try:
                status, _ = self.get("/readyz", timeout=60)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"server not ready after {timeout}s; see {self.log_path}")

    # -- load ------------------------------------------------------------------------------
    def load(self, mode: str, *, items: int, duration: float, **options: Any) -> dict[str, Any]:
        """Run the load generator (`loadgen_argv`, ``options`` included) in its own process and
        return its summary, plus the server's CPU time per request (``server_cpu_ms``): unlike
        QPS and latency, it barely moves when other jobs load the machine, so it compares runs
        on a shared host."""
        argv = self.loadgen_argv(mode, items=items, duration=duration, **options)
        cpu_before = self.cpu_seconds()
        result = subprocess.run(
            argv, env=base_env({}), capture_output=True, text=True, check=True, cwd=REPO_ROOT
        )
        summary = json.loads(result.stdout.strip().splitlines()[-1])
        requests = summary.get("requests") or 0
        if requests:
            summary["server_cpu_ms"] = (self.cpu_seconds() - cpu_before) * 1000 / requests
        return summary

    def load_in_turns(
        self,
        modes: Sequence[str],
        *,
        items: int,
        duration: float,
        turns: int = TURNS,
        variants: Mapping[str, tuple[str, Mapping[str, Any]]] | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Each mode for ``duration`` seconds in all, in ``turns`` runs that take turns with
        the other modes', so that a slow or fast spell of the shared machine falls on every
        mode alike, the reference (`/healthz`) included; one summary per mode over all its
        runs (`merge_summaries`). ``variants`` names modes of its own: label -> (loadgen
        mode, `load` options), e.g. recommendations for two groups of users."""
        variants = variants or {}
        runs: dict[str, list[tuple[dict[str, Any], np.ndarray]]] = {m: [] for m in modes}
        with tempfile.TemporaryDirectory() as directory:
            for turn in range(turns):
                for number, mode in enumerate(modes):
                    timeline = Path(directory) / f"{mode}-{turn}.npy"
                    loadgen_mode, options = variants.get(mode, (mode, {}))
                    summary = self.load(
                        loadgen_mode,
                        items=items,
                        duration=duration / turns,
                        seed=1 + number + 100 * turn,
                        timeline=timeline,
                        **options,
                    )
                    runs[mode].append((summary, np.load(timeline).reshape(-1, 3)))
        return {mode: merge_summaries(runs[mode]) for mode in modes}

    def cpu_seconds(self) -> float:
        """User + system CPU time of the master and its workers so far."""
        tick = os.sysconf("SC_CLK_TCK")
        total = 0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime in clock ticks
        return total / tick

    def loadgen_argv(
        self,
        mode: str,
        *,
        items: int,
        duration: float,
        concurrency: int = 8,
        seed: int = 1,
        rate: float = 0.0,
        window: float = 0.0,
        user_items: Path | None = None,
        timeline: Path | None = None,
        users: range = range(N_USERS),
    ) -> list[str]:
        """The `bench.loadgen` command line against this server (``rate``: open loop;
        ``timeline``: where it saves every request's (send time, latency s, ok))."""
        argv = [
            sys.executable,
            "-m",
            "bench.loadgen",
            "--url",
            self.url,
            "--mode",
            mode,
            "--items",
            str(items),
            # The catalogue's users (or some of them): recommendations go to real histories.
            "--first-user",
            str(users.start),
            "--users",
            str(len(users)),
            "--duration",
            str(duration),
            "--concurrency",
            str(concurrency),
            "--seed",
            str(seed),
            # Event ids start with the tag: unique per run, so no run repeats another's ids.
            "--tag",
            f"bench{time.time_ns()}",
        ]
        if self.token:
            argv += ["--token", self.token]
        if rate:
            argv += ["--rate", str(rate)]
        if window:
            argv += ["--window", str(window)]
        if user_items is not None:
            argv += ["--user-items", str(user_items)]
        if timeline is not None:
            argv += ["--timeline", str(timeline)]
        return argv

    # -- memory ----------------------------------------------------------------------------
    def pids(self) -> list[int]:
        """The gunicorn master and its workers."""
        assert self.process is not None
        root = self.process.pid
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
        found, todo = [], [root]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo.extend(children.get(pid, []))
        return found

    def memory(self) -> dict[str, float]:
        """Summed RSS (counts shared pages once per process) and PSS (shares them out), MiB."""
        rss = pss = 0
        for pid in self.pids():
            try:
                for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1])
            except OSError:
                continue
        return {"rss_mib": rss / 1024, "pss_mib": pss / 1024, "processes": len(self.pids())}


def merge_summaries(runs: Sequence[tuple[dict[str, Any], np.ndarray]]) -> dict[str, Any]:
    """One load generator summary for several runs of a mode: their requests over their
    seconds, the percentiles of all their latencies (each run's timeline), the server's CPU
    per request over all of them."""
    summaries = [summary for summary, _ in runs]
    latencies = np.concatenate([timeline[:, 1] for _, timeline in runs]) * 1000
    requests = sum(s["requests"] for s in summaries)
    seconds = sum(s["seconds"] for s in summaries)
    statuses: Counter[str] = Counter()
    for summary in summaries:
        statuses.update(summary["statuses"])
    merged = {
        **{key: value for key, value in summaries[0].items() if key != "server_cpu_ms"},
        "turns": len(summaries),
        "seconds": round(seconds, 3),
        "requests": requests,
        "errors": sum(s["errors"] for s in summaries),
        "statuses": dict(statuses),
        "qps": requests / seconds if seconds else 0.0,
        **latency_figures(latencies),
    }
    if requests and all("server_cpu_ms" in s for s in summaries):
        cpu_ms = sum(s["server_cpu_ms"] * s["requests"] for s in summaries)
        merged["server_cpu_ms"] = cpu_ms / requests
    return merged
