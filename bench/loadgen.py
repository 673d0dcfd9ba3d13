"""A closed-loop HTTP load generator, run as its own process: ``python -m bench.loadgen``.

``--concurrency`` threads each send one request at a time over ``http.client`` for
``--duration`` seconds and record every latency; the JSON summary goes to stdout. The request
mix varies the user, item or query on every request, from a seeded generator.

With ``--rate`` the load is open-loop instead (`bench.openloop`, ``--concurrency`` unused):
requests are scheduled at that total rate and each latency counts from the scheduled moment,
so a server that falls behind shows it in the percentiles (no coordinated omission).
``--window`` adds per-window figures (for soak runs).
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import sys
import threading
import time
from collections import Counter
from urllib.parse import urlsplit

import numpy as np

from bench.openloop import http_request, run_open_loop

WORDS = (
    "love war space robot family comedy crime detective summer ghost island music school "
    "dragon king city night dark journey christmas zombie horse ocean spy heist wedding"
).split()


def _request(mode: str, rng: random.Random, args: argparse.Namespace, counter: list[int]):
    """(method, path, body) of the next request of ``mode``."""
    if mode == "healthz":
        return "GET", "/healthz", None
    if mode == "recommendations":
        user = args.first_user + rng.randrange(args.users)
        return "GET", f"/v1/users/u{user}/recommendations?k=10", None
    if mode == "similar":
        return "GET", f"/v1/items/b{rng.randrange(1, args.items + 1)}/similar?k=10", None
    if mode == "search":
        query = " ".join(rng.sample(WORDS, rng.randint(1, 4)))
        return "POST", "/v1/search", json.dumps({"query": query, "k": 10})
    if mode.startswith("events"):
        size = int(mode.removeprefix("events"))
        counter[0] += 1
        stamp = time.time()
        users = [rng.randrange(args.users) for _ in range(size)]
        events = [
            {
                "id": f"{args.tag}-{threading.get_ident()}-{counter[0]}-{i}",
                "user_id": f"u{user}",
                "item_id": _event_item(user, rng, args),
                "type": "view",
                "timestamp": stamp,
            }
            for i, user in enumerate(users)
        ]
        return "POST", "/v1/events", json.dumps({"events": events})
    raise ValueError(f"unknown mode {mode!r}")


def _event_item(user: int, rng: random.Random, args: argparse.Namespace) -> str:
    """A random catalogue item, or with ``--user-items`` one of the user's own items (a repeat
    view keeps the profile within the user's tastes, as real traffic mostly does; random items
    would turn every profile into a blend of the whole catalogue)."""
    own = args.user_item_lists[user] if args.user_item_lists else None
    return f"b{rng.choice(own)}" if own else f"b{rng.randrange(1, args.items + 1)}"


def run(args: argparse.Namespace) -> dict[str, object]:
    headers = {"Content-Type": "application/json"}
    if args.token:
        headers["Authorization"] = f"Bearer {args.token}"
    sender = _open_loop if args.rate else _closed_loop
    timeline, status_counts, elapsed, wall_origin, extra = sender(args, headers)
    all_latencies = np.array([latency for _, latency, _ in timeline]) * 1000
    total = int(len(all_latencies))
    ok = sum(n for status, n in status_counts.items() if status.startswith("2"))
    summary: dict[str, object] = {
        "mode": args.mode,
        "rate": args.rate or None,
        "concurrency": None if args.rate else args.concurrency,
        "seconds": round(elapsed, 3),
        "requests": total,
        "errors": total - ok,
        "statuses": dict(status_counts),
        "qps": total / elapsed if elapsed else 0.0,
        **latency_figures(all_latencies),
        **extra,
    }
    if args.window:
        summary["windows"] = windows(timeline, args.window)
    if args.timeline:
        # Every request as (wall-clock send time, latency s, ok), to line up with other logs.
        rows = sorted(timeline)
        np.save(args.timeline, np.array([(wall_origin + at, lat, ok) for at, lat, ok in rows]))
    return summary


def latency_figures(latencies_ms: np.ndarray) -> dict[str, float | None]:
    """The summary's p50, p99 and max of ``latencies_ms`` (None each when there are none)."""
    if not len(latencies_ms):
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    return {
        "p50_ms": float(np.percentile(latencies_ms, 50)),
        "p99_ms": float(np.percentile(latencies_ms, 99)),
        "max_ms": float(latencies_ms.max()),
    }


#: What a sender returns: every request's (seconds since start, latency s, ok), the count of
#: each status, the seconds it ran, the wall-clock time of its start, and figures of its own
#: for the summary.
Sent = tuple[list[tuple[float, float, bool]], Counter[str], float, float, dict[str, float]]


def _open_loop(args: argparse.Namespace, headers: dict[str, str]) -> Sent:
    """Requests at ``args.rate`` a second from one thread (`bench.openloop`)."""
    url = urlsplit(args.url)
    rng = random.Random(args.seed * 1000)
    counter = [0]

    def next_request() -> bytes:
        method, path, body = _request(args.mode, rng, args, counter)
        return http_request(method, path, body, url.netloc, headers)

    wall_origin = time.time()
    done = run_open_loop(
        (url.hostname or "127.0.0.1", url.port or 80),
        next_request,
        rate=args.rate,
        duration=args.duration,
    )
    late_ms = np.array(done.late) * 1000
    extra = {}
    if len(late_ms):
        extra = {
            "send_late_p99_ms": float(np.percentile(late_ms, 99)),
            "send_late_max_ms": float(late_ms.max()),
        }
    return done.timeline, done.statuses, done.seconds, wall_origin, extra


def _closed_loop(args: argparse.Namespace, headers: dict[str, str]) -> Sent:
    """``args.concurrency`` threads, each sending its next request when the last is answered."""
    url = urlsplit(args.url)
    statuses: list[Counter[str]] = [Counter() for _ in range(args.concurrency)]
    timeline: list[list[tuple[float, float, bool]]] = [[] for _ in range(args.concurrency)]
    start_gate = threading.Barrier(args.concurrency + 1)
    deadline = [0.0]
    origin = [0.0]

    def worker(slot: int) -> None:
        rng = random.Random(args.seed * 1000 + slot)
        counter = [0]
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
        seen, events = statuses[slot], timeline[slot]
        start_gate.wait()
        while time.perf_counter() < deadline[0]:
            method, path, body = _request(args.mode, rng, args, counter)
            began = time.perf_counter()
            try:
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                status = str(response.status)
                if response.getheader("Connection", "").lower() == "close":
                    conn.close()
            except (OSError, http.client.HTTPException) as exc:
                status = type(exc).__name__
                conn.close()
            seen[status] += 1
            events.append((began - origin[0], time.perf_counter() - began, status.startswith("2")))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.concurrency)]
    for thread in threads:
        thread.start()
    origin[0] = time.perf_counter()
    wall_origin = time.time()
    deadline[0] = origin[0] + args.duration
    start_gate.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - origin[0]
    status_counts: Counter[str] = Counter()
    for part in statuses:
        status_counts.update(part)
    return [e for part in timeline for e in part], status_counts, elapsed, wall_origin, {}


def windows(events: list[tuple[float, float, bool]], width: float) -> list[dict[str, object]]:
    """Requests grouped by when they were sent: count, errors, p50 and p99 per window."""
    if not len(events):
        return []
    table = np.asarray(events, dtype=float).reshape(-1, 3)
    number = (table[:, 0] // width).astype(int)
    out = []
    for index in range(int(number.max()) + 1):
        part = table[number == index]
        ms = part[:, 1] * 1000
        out.append(
            {
                "start_s": index * width,
                "requests": len(part),
                "errors": int((part[:, 2] == 0).sum()),
                "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
                "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None,
            }
        )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--mode", required=True)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--users", type=int, default=10_000, help="how many users (u0, u1, ...)")
    parser.add_argument("--first-user", type=int, default=0, help="recommendations: from u<N>")
    parser.add_argument("--items", type=int, required=True)
    parser.add_argument("--token", default="")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rate", type=float, default=0.0, help="open loop: requests/s in all")
    parser.add_argument("--window", type=float, default=0.0, help="per-window figures, seconds")
    parser.add_argument("--timeline", help="write every request's (time, latency, ok) here (.npy)")
    parser.add_argument("--tag", default=f"bench{int(time.time())}")
    parser.add_argument("--user-items", help="JSON list: user index -> that user's item ids")
    args = parser.parse_args(argv)
    args.user_item_lists = None
    if args.user_items:
        with open(args.user_items, encoding="utf-8") as handle:
            args.user_item_lists = json.load(handle)
    json.dump(run(args), sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
