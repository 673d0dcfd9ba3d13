"""No lost updates and crash safety through a real `driftrec serve --workers 2` (gunicorn).

Many threads post events for a few users at once, retrying some batches and racing on the same
event ids; afterwards every accepted event is stored exactly once, no request got a 5xx, and
`driftrec verify` finds every profile equal to the one rebuilt from its events. Then the server
is killed with SIGKILL in the middle of ingestion: every acknowledged event is in the database
and in its profile, and a restarted server serves them.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from cli_helpers import REPO_ROOT, fields, invoke, ok, write_items_jsonl
from sqlalchemy import func, select

from store.db import Database
from store.events import get_profile, pending_counts
from store.models import Event, User

ITEMS = 20
USERS = [f"user-{n}" for n in range(4)]
ITEM_IDS: list[str] = []  # the catalogue's ids, set by `prepare`


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`driftrec serve` in its own process group, so SIGKILL reaches master and workers."""

    def __init__(self, env: dict[str, str], log: Path, key: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.key = key
        self.log = log
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service.cli", "serve", "--workers", "2"]
                + ["--port", str(self.port)],
                cwd=REPO_ROOT,
                env={**os.environ, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 90
        while True:
            assert self.process.poll() is None, log.read_text()
            try:
                if self.call("GET", "/healthz", timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)

    def call(self, method: str, path: str, body: object = None, timeout: float = 60):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.key}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


def prepare(tmp_path: Path, url: str, movielens_dir: Path) -> tuple[dict[str, str], str]:
    """A migrated database with ITEMS embedded items, and a read+write key."""
    env = {
        "DRIFTREC_DATA_DIR": str(tmp_path / "var"),
        "DRIFTREC_DATABASE_URL": url,
        "HF_HUB_OFFLINE": "1",
    }
    items = write_items_jsonl(movielens_dir, tmp_path / "items.jsonl", 0, ITEMS)
    ITEM_IDS[:] = [json.loads(line)["id"] for line in items.read_text().splitlines()]
    ok(invoke(env, "db", "upgrade"))
    ok(invoke(env, "import", "items", str(items)))
    key = ok(invoke(env, "keys", "create", "--name", "load", "--scope", "read,write")).stdout
    return env, key.strip()


@pytest.fixture(params=["sqlite", "postgresql"])
def catalogue_env(request, tmp_path, movielens_dir) -> tuple[dict[str, str], str]:
    url = (
        f"sqlite:///{tmp_path / 'driftrec.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    return prepare(tmp_path, url, movielens_dir)


def stored_event_ids(url: str) -> Counter[str]:
    db = Database(url)
    try:
        with db.read() as session:
            return Counter(session.scalars(select(Event.event_id)))
    finally:
        db.dispose()


def event(event_id: str, rng: random.Random, now: float) -> dict[str, object]:
    return {
        "id": event_id,
        "user_id": rng.choice(USERS),
        "item_id": str(rng.choice(ITEM_IDS)),
        "type": rng.choice(["view", "click", "like", "dislike"]),
        "timestamp": now - rng.uniform(0, 30 * 86_400),
    }


def test_concurrent_events_are_stored_exactly_once(tmp_path, catalogue_env):
    env, key = catalogue_env
    server = Server(env, tmp_path / "serve.log", key)
    now = time.time()
    posted: Counter[str] = Counter()  # event id -> times it was in an answered batch
    accepted_total = Counter()
    failures: list[str] = []
    lock = threading.Lock()

    def client(worker: int) -> None:
        rng = random.Random(worker)
        sent: list[list[dict[str, object]]] = []
        for n in range(12):
            if sent and rng.random() < 0.3:
                batch = rng.choice(sent)  # a client retrying a batch it already sent
            else:
                # ids shared by pairs of threads: two workers race to insert the same event.
                # Batches of 10 fold ahead of SQLite's write lock (`interest.ingest`), those
                # of 5 under it; a single event takes the lock-free path (`store.single_event`).
                size = (1, 5, 10)[n % 3]
                batch = [event(f"w{worker // 2}-b{n}-e{i}", rng, now) for i in range(size)]
                sent.append(batch)
            status, body = server.call("POST", "/v1/events", {"events": batch})
            with lock:
                if status != 200:
                    failures.append(f"{status} {body}")
                    continue
                assert not body["rejected"], body
                accepted_total["accepted"] += body["accepted"]
                accepted_total["duplicates"] += body["duplicates"]
                posted.update({str(e["id"]) for e in batch})

    threads = [threading.Thread(target=client, args=(w,)) for w in range(8)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        assert not failures, failures  # no 5xx (nor any other refusal)
        status, body = server.call("GET", f"/v1/users/{USERS[0]}")
        assert status == 200
    finally:
        server.stop()

    stored = stored_event_ids(env["DRIFTREC_DATABASE_URL"])
    assert set(stored) == set(posted)
    assert set(stored.values()) == {1}  # exactly once
    assert accepted_total["accepted"] == len(stored)
    assert accepted_total["duplicates"] == sum(posted.values()) - len(stored)
    report = fields(ok(invoke(env, "verify")).stdout, "profiles")
    assert report == {"checked": str(len(USERS)), "drifted": "0"}
    log = (tmp_path / "serve.log").read_text()
    assert "Traceback" not in log and "level=ERROR" not in log, log
    assert key not in log


def test_acknowledged_events_survive_kill_9(tmp_path, catalogue_env):
    # SQLite: WAL with synchronous=NORMAL keeps every commit across a process crash;
    # PostgreSQL commits durably. Single events (their own write path) and batches of 3.
    env, key = catalogue_env
    server = Server(env, tmp_path / "serve.log", key)
    now = time.time()
    acknowledged: set[str] = set()
    sent: set[str] = set()
    stop = threading.Event()
    lock = threading.Lock()

    def client(worker: int) -> None:
        rng = random.Random(100 + worker)
        n = 0
        while not stop.is_set():
            batch = [event(f"k{worker}-{n}-{i}", rng, now) for i in range(1 + 2 * (n % 2))]
            n += 1
            with lock:
                sent.update(str(e["id"]) for e in batch)
            try:
                status, body = server.call("POST", "/v1/events", {"events": batch}, timeout=10)
            except (OSError, http.client.HTTPException):
                # The server died under this request (also between the response's headers and
                # its body: IncompleteRead): not acknowledged.
                continue
            if status == 200 and body["accepted"] + body["duplicates"] == len(batch):
                with lock:
                    acknowledged.update(str(e["id"]) for e in batch)

    threads = [threading.Thread(target=client, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 120
        while len(acknowledged) < 150:
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.05)
        server.kill()  # SIGKILL, master and workers, while the clients keep posting
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        server.stop()

    url = env["DRIFTREC_DATABASE_URL"]
    stored = stored_event_ids(url)
    assert acknowledged <= set(stored), f"lost {len(acknowledged - set(stored))} events"
    assert set(stored) <= sent and set(stored.values()) == {1}
    # Every stored event is in its profile, folded or pending (verify rebuilds each from its
    # events and compares it with the stored profile with the pending events folded in).
    assert fields(ok(invoke(env, "verify")).stdout, "profiles")["drifted"] == "0"
    db = Database(url)
    try:
        with db.read() as session:
            counts = dict(
                session.execute(
                    select(User.external_id, func.count()).join(Event).group_by(User.external_id)
                ).all()
            )
            pending = pending_counts(session, session.scalars(select(User.id)).all())
            for user in session.scalars(select(User)):
                folded = get_profile(session, user.id).event_count
                assert folded + pending.get(user.id, 0) == counts[user.external_id]
    finally:
        db.dispose()

    restarted = Server(env, tmp_path / "serve.log", key)
    try:
        for user, count in counts.items():
            status, body = restarted.call("GET", f"/v1/users/{user}")
            assert status == 200 and body["event_count"] == count, body
            status, body = restarted.call("GET", f"/v1/users/{user}/recommendations?k=3")
            assert status == 200 and body["strategy"] == "personalized", body
    finally:
        restarted.stop()
