"""``python -m bench.soak`` (``make soak``): minutes of steady load with writes and a reindex.

1. A copy of the benchmark catalogue (``--size`` items, 10k users) is served by
   `driftrec serve --workers 2`.
2. The maximum recommendation rate is measured (closed loop, concurrency 8, 20 s) while the
   event stream of step 3 runs.
3. For ``--minutes``, recommendations are sent open-loop at ``--load`` (70%) of that rate while
   a second load generator posts batches of 10 events (``--event-rate`` batches a second,
   open-loop), and halfway through `driftrec reindex
   --full` rebuilds and publishes a new index version under the running server.
4. Every 30 s window reports requests, errors, p50 and p99; server memory (PSS, RSS) is sampled
   every 10 s. The run holds when nothing failed, the asked rate was sustained without a
   backlog (no window's median above the closed-loop maximum's median), no window's p99
   exceeds 3x the steady state (the median window before the reindex, itself at most 25 ms,
   the recommendation p99 target), memory at the end is
   within 10% (+50 MiB) of memory after the first window, and the rebuilt index was served.

Events re-view each user's own items (their benchmark history): random catalogue items would
turn every profile into a blend of the whole catalogue, a query no real user makes and the
hardest one for an approximate index.

Each second whose p99 passed 25 ms is listed with what else happened in it: the job's phase,
the host's steal time, the server's accept queue and the CPU time of the machine's other
processes (on the benchmark VMs its own RabbitMQ broker starts an Erlang VM every ~61 s, a
third of a second of CPU).

Results go to ``bench/results/soak.json`` and ``soak.md`` (``soak-postgresql.*`` for a soak on
PostgreSQL, so that neither overwrites the other). Not part of `make test`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench.data import BENCH_DIR, REPO_ROOT, Catalogue, build_catalogue
from bench.machine import (
    BACKLOG_EVERY_S,
    IO_STALL_SHOWN_MS,
    OTHERS_SHOWN_MS,
    MachineWatch,
    beside,
    slow_seconds,
    ticks_ms,
)
from bench.postgres import fresh_database, vacuum_analyze
from bench.report import RESULTS_DIR
from bench.server import DRIFTREC, Server, base_env, handled
from indexer.pacing import machine_cpu_ticks

log = logging.getLogger("bench.soak")

WINDOW_S = 30.0
PEAK_S = 20.0
MEMORY_EVERY_S = 10.0
P99_SPREAD_LIMIT = 3.0
#: The steady state itself must be within the service's recommendation p99 target: a run whose
#: every window is slow would otherwise pass the spread check (one did, at 37 ms steady).
P99_STEADY_LIMIT_MS = 25.0
MEMORY_GROWTH_LIMIT = 0.10
MEMORY_SLACK_MIB = 50.0
#: ``--database``: SQLite (a copy of the catalogue's file) or PostgreSQL
#: (``DRIFTREC_BENCH_POSTGRES_URL``'s server, database ``driftrec_soak``).
DATABASE_NAMES = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}


def result_path(database: str, suffix: str) -> Path:
    """Where a soak on ``database`` writes its ``suffix`` file: ``soak.json`` and so on for
    SQLite, ``soak-postgresql.json`` for PostgreSQL. ``-timeline.npy`` holds every soak
    request's (send time, latency, ok), for a closer look at slow windows."""
    stem = "soak" if database == "sqlite" else f"soak-{database}"
    return RESULTS_DIR / f"{stem}{suffix}"


def soak(
    size: int, minutes: float, load: float, event_rate: float, database: str = "sqlite"
) -> dict[str, Any]:
    catalogue = build_catalogue(size, progress=False)
    env = soak_copy(catalogue, database)
    # Write the copy out now: the kernel would otherwise flush its ~0.5 GB 30 s later, in the
    # middle of the measurement (on the benchmark VM, writeback takes CPU time and slowed the
    # server to half its rate for ~30 s).
    os.sync()
    directory = Path(env["DRIFTREC_DATA_DIR"])
    timeline_path = result_path(database, "-timeline.npy")
    duration = minutes * 60
    result: dict[str, Any] = {
        "size": size,
        "database": database,
        "minutes": minutes,
        "load": load,
        "event_rate": event_rate,
    }
    run_env = base_env(env)
    subprocess.run([DRIFTREC, "reindex"], env=run_env, check=True, capture_output=True)
    # Events re-view each user's own items, so profiles keep their shape (see loadgen).
    user_items = directory / "user-items.json"
    # The load generator writes the timeline there at the end: on a fresh clone it is absent.
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    user_items.write_text(json.dumps([h.tolist() for h in catalogue.user_events]))
    with Server(env, name=f"soak-{size}") as server:

        def start(mode: str, seconds: float, **kwargs: Any) -> subprocess.Popen[str]:
            argv = server.loadgen_argv(mode, items=size, duration=seconds, **kwargs)
            return subprocess.Popen(
                argv, env=base_env({}), stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT
            )

        def start_events(seconds: float, seed: int) -> subprocess.Popen[str]:
            return start(
                "events10",
                seconds,
                rate=event_rate,
                concurrency=2,
                window=WINDOW_S,
                seed=seed,
                user_items=user_items,
            )

        server.load("recommendations", items=size, duration=5, concurrency=4, seed=99)
        # The maximum is measured with the same event stream running: the rate the server
        # sustains in the soak's conditions, of which the soak asks `load`.
        warmup_events = start_events(PEAK_S + 5, seed=4)
        peak = server.load("recommendations", items=size, duration=PEAK_S, seed=1)
        warmup_events.communicate()
        rate = load * float(peak["qps"])
        result["max_rate"] = peak
        result["rate"] = rate
        log.info("soak max qps=%.1f, soaking at %.1f qps for %.0f s", peak["qps"], rate, duration)

        recs = start(
            "recommendations",
            duration,
            rate=rate,
            window=WINDOW_S,
            seed=2,
            timeline=timeline_path,
        )
        events = start_events(duration, seed=3)
        began = time.monotonic()
        memory: list[dict[str, float]] = []
        cpu = MachineCpu()
        watch = MachineWatch(server.port)
        reindex: dict[str, Any] | None = None
        while recs.poll() is None:
            elapsed = time.monotonic() - began
            memory.append(
                {"at_s": round(elapsed, 1), **server.memory(), "cpu_busy": cpu.busy_share()}
            )
            if reindex is None and elapsed >= duration / 2:
                reindex = {"at_s": round(elapsed, 1), **_reindex(run_env, server)}
            time.sleep(MEMORY_EVERY_S)
        result["recommendations"] = json.loads(recs.communicate()[0].strip().splitlines()[-1])
        watch.stop()
        timeline = np.load(timeline_path)
        # Wall-clock time of the first send: the timeline's and the windows' zero.
        origin = float(timeline[0, 0]) if len(timeline) else time.time()
        result["slow_seconds"] = slow_seconds(timeline, P99_STEADY_LIMIT_MS)
        watch.attribute(result["slow_seconds"], origin)
        if len(timeline):
            result["steal_ms_total"] = ticks_ms(watch.steal, origin, float(timeline[-1, 0]))
            result["others_ms_total"] = ticks_ms(watch.others, origin, float(timeline[-1, 0]))
        if reindex is not None:
            for second in result["slow_seconds"]:
                second["job_phase"] = phase_at(reindex["phases"], origin + second["start_s"])
            reindex["phases_s"] = [
                {**p, "start": p["start"] - origin, "end": p["end"] - origin}
                for p in reindex.pop("phases")
            ]
        result["events"] = json.loads(events.communicate()[0].strip().splitlines()[-1])
        result["memory"] = memory
        handled = handler_p99_by_window(server.log_since(), origin)
        busy = cpu_busy_by_window(memory)
        for window in result["recommendations"]["windows"]:
            index = int(window["start_s"] // WINDOW_S)
            window["handler_p99_ms"] = handled.get(index)
            window["cpu_busy"] = busy.get(index)
        result["reindex"] = reindex
    result["verdict"] = verdict(result)
    return result


def soak_copy(catalogue: Catalogue, database: str) -> dict[str, str]:
    """A copy of the benchmark catalogue for the soak to change (its events and index
    versions), so that the catalogue stays as the other benchmarks expect it: the SQLite
    directory copied, or, for ``postgresql``, the catalogue exported (`driftrec export`) and
    restored (`driftrec import dump`) into a fresh database, vacuumed and analysed. Its
    DRIFTREC_DATABASE_URL and DRIFTREC_DATA_DIR."""
    directory = BENCH_DIR / f"soak-{catalogue.size}" / database
    shutil.rmtree(directory.parent, ignore_errors=True)
    if database == "sqlite":
        shutil.copytree(catalogue.directory, directory)
        return {
            "DRIFTREC_DATABASE_URL": f"sqlite:///{directory / 'driftrec.db'}",
            "DRIFTREC_DATA_DIR": str(directory),
        }
    dump = directory.parent / "dump"
    env = {
        "DRIFTREC_DATABASE_URL": fresh_database("driftrec_soak"),
        "DRIFTREC_DATA_DIR": str(directory),
    }
    for argv, run_env in (
        (["export", str(dump)], catalogue.env()),
        (["db", "upgrade"], env),
        (["import", "dump", str(dump)], env),
    ):
        subprocess.run([DRIFTREC, *argv], env=base_env(run_env), check=True, capture_output=True)
    shutil.rmtree(dump)
    directory.mkdir(parents=True, exist_ok=True)  # the dump may hold no files to copy there
    vacuum_analyze(env["DRIFTREC_DATABASE_URL"])
    return env


class MachineCpu:
    """The share of the machine's CPU time (all cores, every process) spent busy since the
    previous call, from /proc/stat (None where it cannot be read)."""

    def __init__(self) -> None:
        self._last = machine_cpu_ticks()

    def busy_share(self) -> float | None:
        now, last = machine_cpu_ticks(), self._last
        self._last = now
        if now is None or last is None or now[1] <= last[1]:
            return None
        return (now[0] - last[0]) / (now[1] - last[1])


def cpu_busy_by_window(memory: list[dict[str, Any]]) -> dict[int, float]:
    """Mean machine CPU busy share per 30 s window, from the samples taken every
    `MEMORY_EVERY_S` (each covers the interval before it)."""
    shares: dict[int, list[float]] = {}
    for sample in memory:
        if sample.get("cpu_busy") is not None and sample["at_s"] > 0:
            index = int((sample["at_s"] - 1e-9) // WINDOW_S)
            shares.setdefault(index, []).append(sample["cpu_busy"])
    return {index: statistics.mean(values) for index, values in shares.items()}


def handler_p99_by_window(log_text: str, origin: float) -> dict[int, float]:
    """p99 of the server's own time per recommendation (`bench.server.handled`) per 30 s
    window from wall-clock ``origin``. Tells a slow window whose requests were slow inside the
    server from one whose requests waited for it."""
    durations: dict[int, list[float]] = {}
    for at, ms in handled(log_text, "/v1/users/<user_id>/recommendations"):
        if at + 1 < origin:  # the warm-up and the closed-loop maximum before the soak
            continue
        durations.setdefault(max(0, int((at - origin) // WINDOW_S)), []).append(ms)
    return {index: float(np.percentile(values, 99)) for index, values in durations.items()}


def _reindex(env: dict[str, str], server: Server) -> dict[str, Any]:
    """A full rebuild published under load, and how long until the server answers from it."""
    started, started_wall = time.monotonic(), time.time()
    done = subprocess.run(
        [DRIFTREC, "reindex", "--full"], env=env, capture_output=True, text=True, check=True
    )
    seconds = time.monotonic() - started
    ended_wall = time.time()
    line = next(x for x in done.stdout.splitlines() if x.startswith("reindex "))
    published = int(dict(p.split("=", 1) for p in line.split()[1:] if "=" in p)["index_version"])
    published_at = time.monotonic()
    served_after = None
    while served_after is None and time.monotonic() - published_at < 30:
        _, body = server.get("/v1/users/u1/recommendations?k=1")
        if body.get("index_version") == published:
            served_after = time.monotonic() - published_at
        else:
            time.sleep(0.2)
    log.info(
        "soak reindex version=%d in %.1f s, served after %s s", published, seconds, served_after
    )
    return {
        "seconds": seconds,
        "index_version": published,
        "served_after_s": served_after,
        "phases": job_phases(done.stderr, started_wall, ended_wall, served_after),
    }


def job_phases(
    log_text: str, started: float, ended: float, served_after: float | None
) -> list[dict[str, Any]]:
    """The job's phases as wall-clock intervals, from the ``timings:`` of its "reindex
    published" log line: the phases ran one after another and the last ended (give or take
    the version's commit) as the job exited, so they are laid back from ``ended``; what
    precedes the first is "start-up" (the interpreter, imports, settings), and what follows
    until the new version answered is "swap" (the workers verifying and mapping it)."""
    line = next((x for x in log_text.splitlines() if "timings:" in x), "")
    timings = line.split("timings:", 1)[1].strip().rstrip('"').split() if line else []
    phases, end = [], ended
    for name, value in reversed([item.split("=", 1) for item in timings]):
        begin = end - float(value.rstrip("s"))
        phases.append({"phase": name, "start": begin, "end": end})
        end = begin
    phases.append({"phase": "start-up", "start": started, "end": end})
    phases.reverse()
    if served_after is not None:
        phases.append({"phase": "swap", "start": ended, "end": ended + served_after})
    return phases


def phase_at(phases: list[dict[str, Any]], when: float) -> str:
    """The job phase running at wall-clock ``when`` ("" outside the job)."""
    return next((p["phase"] for p in phases if p["start"] <= when < p["end"]), "")


def verdict(result: dict[str, Any]) -> dict[str, Any]:
    """The checks. p99 is "stable" when no window's p99 exceeds `P99_SPREAD_LIMIT` times the
    steady state, the median window p99 before the reindex, and that is at most
    `P99_STEADY_LIMIT_MS`."""
    recs, events = result["recommendations"], result["events"]
    windows = [w for w in recs["windows"] if w["requests"]]
    p99s = [w["p99_ms"] for w in windows]
    p50s = [w["p50_ms"] for w in windows]
    reindex_at = (result["reindex"] or {}).get("at_s", math.inf)
    before = [w["p99_ms"] for w in windows if w["start_s"] + WINDOW_S <= reindex_at] or p99s
    steady_p99 = statistics.median(before)
    memory = result["memory"]
    settled = next((m for m in memory if m["at_s"] >= WINDOW_S), memory[0])
    end = memory[-1]
    growth = (end["pss_mib"] - settled["pss_mib"]) / settled["pss_mib"]
    checks = {
        "no_errors": recs["errors"] == 0 and events["errors"] == 0,
        "p99_stable": max(p99s) <= P99_SPREAD_LIMIT * steady_p99
        and steady_p99 <= P99_STEADY_LIMIT_MS,
        "memory_flat": end["pss_mib"]
        <= settled["pss_mib"] * (1 + MEMORY_GROWTH_LIMIT) + MEMORY_SLACK_MIB,
        "achieved_rate": recs["qps"] >= 0.95 * result["rate"],
        # A median above the saturated closed-loop median means requests queue without bound:
        # the p99 check alone would call a uniformly overloaded run "stable".
        "keeps_up": max(p50s) <= result["max_rate"]["p50_ms"],
        "reindex_served": bool(result["reindex"])
        and result["reindex"]["served_after_s"] is not None,
    }
    return {
        **checks,
        "holds": all(checks.values()),
        "p99_steady_ms": steady_p99,
        "p99_worst_window_ms": max(p99s),
        "p50_worst_window_ms": max(p50s),
        "memory_pss_settled_mib": settled["pss_mib"],
        "memory_pss_end_mib": end["pss_mib"],
        "memory_growth": growth,
    }


def render(result: dict[str, Any]) -> str:
    recs, events, v = result["recommendations"], result["events"], result["verdict"]
    database = result.get("database", "sqlite")  # absent from soaks before commit 04e8913
    timeline_path = result_path(database, "-timeline.npy")
    lines = [
        f"Soak ({result['started_at']}, commit {result['commit']}, load average "
        f"{result['load_average_at_start']:.1f} at start): {result['size']:,} items on "
        f"{DATABASE_NAMES[database]}, "
        f"{result['minutes']:g} min at {result['load']:.0%} of the maximum recommendation rate "
        f"({result['max_rate']['qps']:.0f} qps closed-loop -> {result['rate']:.1f} qps "
        f"open-loop), events in batches of 10 at {result['event_rate']:g}/s, `reindex --full` "
        "halfway.",
        "",
        "| check | value | holds |",
        "|---|---|---|",
        f"| errors | recommendations {recs['errors']} of {recs['requests']}, event batches "
        f"{events['errors']} of {events['requests']} | {_yes(v['no_errors'])} |",
        f"| achieved rate | {recs['qps']:.1f} qps of {result['rate']:.1f} asked | "
        f"{_yes(v['achieved_rate'])} |",
        f"| keeps up | worst window p50 {v['p50_worst_window_ms']:.1f} ms, closed-loop "
        f"maximum's p50 {result['max_rate']['p50_ms']:.1f} ms | {_yes(v['keeps_up'])} |",
        f"| p99 per 30 s window | {v['p99_steady_ms']:.1f} ms before the reindex (median), worst "
        f"{v['p99_worst_window_ms']:.1f} ms (limits: x{P99_SPREAD_LIMIT:g}, steady <= "
        f"{P99_STEADY_LIMIT_MS:g} ms) | "
        f"{_yes(v['p99_stable'])} |",
        f"| server memory (PSS) | {v['memory_pss_settled_mib']:.0f} MiB after the first window, "
        f"{v['memory_pss_end_mib']:.0f} MiB at the end ({v['memory_growth']:+.1%}) | "
        f"{_yes(v['memory_flat'])} |",
    ]
    reindex = result["reindex"]
    if reindex:
        lines.append(
            f"| reindex under load | version {reindex['index_version']} built and published "
            f"in {reindex['seconds']:.1f} s at {reindex['at_s']:.0f} s; answered from "
            f"{_seconds(reindex['served_after_s'])} after publishing | "
            f"{_yes(reindex['served_after_s'] is not None)} |"
        )
    slow = result.get("slow_seconds", [])
    listed = "; ".join(_slow_second(s) for s in slow)
    lines += [
        "",
        f"Seconds with p99 over {P99_STEADY_LIMIT_MS:g} ms: {len(slow)}"
        + (f": {listed}" if slow else "")
        + f" (every request's send time and latency: `{timeline_path.relative_to(REPO_ROOT)}`;"
        " waiting for a worker: the most requests seen in the server's accept queue that"
        f" second, sampled every {BACKLOG_EVERY_S:g} s from /proc/net/tcp;"
        " steal: CPU time the host took from this VM in that second, from /proc/stat;"
        " other processes: CPU time of the machine's processes outside this soak (not its"
        " server, load generators or job, nor a PostgreSQL server's) in that second, from"
        f" /proc, shown from {OTHERS_SHOWN_MS:g} ms; stalled on I/O: time some task waited for"
        f" I/O in that second, from /proc/pressure/io, shown from {IO_STALL_SHOWN_MS:g} ms)."
        + (
            f" Steal over the whole run: {result['steal_ms_total']:.0f} ms."
            if result.get("steal_ms_total") is not None
            else ""
        )
        + _others_total(result.get("others_ms_total")),
    ]
    if reindex and reindex.get("phases_s"):
        lines += [
            "",
            "The job's phases (s from the start): "
            + ", ".join(
                f"{p['phase']} {p['start']:.1f}-{p['end']:.1f}" for p in reindex["phases_s"]
            )
            + ".",
        ]
    lines += [
        "",
        "p99 in the server is its own handling of a recommendation (its request log), without"
        " the wait for a free worker; CPU busy is the whole machine's (load generators included)."
        + (
            " The load generator sent its requests late by p99"
            f" {recs['send_late_p99_ms']:.1f} ms, at most {recs['send_late_max_ms']:.1f} ms"
            " (waiting for a CPU itself): latency counts from the scheduled moment, so that"
            " much of a slow request's time is the generator's."
            if "send_late_p99_ms" in recs
            else ""
        ),
        "",
        "| window | requests | errors | p50 ms | p99 ms | p99 in the server ms | CPU busy |",
        "|---|---|---|---|---|---|---|",
    ]
    for w in recs["windows"]:
        busy = w.get("cpu_busy")
        lines.append(
            f"| {w['start_s']:.0f} s | {w['requests']} | {w['errors']} | {_ms(w['p50_ms'])} | "
            f"{_ms(w['p99_ms'])} | {_ms(w.get('handler_p99_ms'))} | "
            f"{'-' if busy is None else f'{busy:.0%}'} |"
        )
    return "\n".join(lines)


def _slow_second(second: dict[str, Any]) -> str:
    """A second over the limit: its p99, the job's phase then, and what else went on."""
    parts = [f"{second['p99_ms']:.0f} ms"]
    if second.get("job_phase"):
        parts.append(f"job: {second['job_phase']}")
    return f"{second['start_s']:.0f} s ({', '.join(parts + beside(second))})"


def _others_total(ms: float | None) -> str:
    """Other processes' CPU over the whole run, as the report says it. The estimate subtracts
    the processes' own CPU times from /proc/stat's ticks, and the two accountings drift apart
    over a run (by -2,160 ms in a five-minute soak on a Zen 4 VM): a total below
    `OTHERS_SHOWN_MS` measures nothing, and a negative one is not printed as if it did."""
    if ms is None:
        return ""
    if ms < OTHERS_SHOWN_MS:
        return (
            f" Other processes over the whole run: none measurable ({ms:.0f} ms as estimated:"
            " within the drift of /proc/stat's ticks against the processes' own times)."
        )
    return f" Other processes over the whole run: {ms:.0f} ms."


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _seconds(value: float | None) -> str:
    return f"{value:.1f} s" if value is not None else "never (30 s)"


def _yes(ok: bool) -> str:
    return "yes" if ok else "NO"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--size", type=int, default=100_000, help="catalogue size")
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--load", type=float, default=0.7, help="share of the maximum rate")
    parser.add_argument(
        "--event-rate", type=float, default=20.0, help="batches of 10 events per second"
    )
    parser.add_argument("--database", choices=sorted(DATABASE_NAMES), default="sqlite")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO_ROOT
    ).stdout.strip()
    header = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit,
        "load_average_at_start": os.getloadavg()[0],
    }
    result = {
        **header,
        **soak(args.size, args.minutes, args.load, args.event_rate, args.database),
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    result_path(args.database, ".json").write_text(json.dumps(result, indent=2) + "\n")
    text = render(result)
    result_path(args.database, ".md").write_text(text + "\n")
    print(text)
    sys.exit(0 if result["verdict"]["holds"] else 1)


if __name__ == "__main__":
    main()
