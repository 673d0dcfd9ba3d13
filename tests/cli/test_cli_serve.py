"""`driftrec serve` runs real gunicorn workers that switch to a new index version while serving,
and keep answering from a whole version when a reindex is killed."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from cli_helpers import fields, invoke, ok, spawn, write_items_jsonl, write_movielens

from store.db import Database
from store.versions import active_index_version

FIRST, MORE = 40, 20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def wait_ready(base: str, server, log: Path, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        assert server.poll() is None, log.read_text()
        try:
            status, body = get(f"{base}/readyz")
            if status == 200:
                return body
        except OSError:
            pass  # not listening yet
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)


def test_workers_pick_up_a_new_index_version(tmp_path, cli_env, movielens_dir):
    # What is tested here is the version switch, not API keys (a loopback server without auth).
    env = {**cli_env, "DRIFTREC_RELOAD_INTERVAL_S": "0.5", "DRIFTREC_AUTH": "disabled"}
    ok(invoke(env, "db", "upgrade"))
    movies = write_movielens(movielens_dir, tmp_path / "ml", 0, FIRST)
    ok(invoke(env, "import", "movielens", str(movies)))
    first = fields(ok(invoke(env, "reindex")).stdout, "reindex")

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    server = spawn(env, "serve", "--workers", "2", "--port", str(port), log=log)
    db = Database(env["DRIFTREC_DATABASE_URL"])
    try:
        assert wait_ready(base, server, log)["index_version"] == int(first["index_version"])
        status, body = get(f"{base}/v1/items/1/similar?k=5")
        assert status == 200, body
        assert body["index_version"] == int(first["index_version"])
        assert len(body["items"]) == 5

        # New items arrive through the bulk path (not the API), then a job publishes a version.
        more = write_items_jsonl(movielens_dir, tmp_path / "more.jsonl", FIRST, FIRST + MORE)
        ok(invoke(env, "import", "items", "--no-embed", str(more)))
        # First the job is killed (SIGKILL): once early, once as its index file appears. The
        # workers go on answering from a whole version: the first, unless the job got as far
        # as publishing its own.
        indexes = Path(env["DRIFTREC_DATA_DIR"]) / "indexes"
        for moment in ("early", "index file"):
            before = set(indexes.iterdir())
            job = spawn(env, "reindex", log=tmp_path / f"killed-{moment}.log")
            deadline = time.monotonic() + 120
            if moment == "early":
                time.sleep(1.0)
            else:
                while job.poll() is None and set(indexes.iterdir()) == before:
                    assert time.monotonic() < deadline, (
                        tmp_path / f"killed-{moment}.log"
                    ).read_text()
                    time.sleep(0.005)
            job.kill()
            job.wait(timeout=30)
            with db.read() as session:
                active = active_index_version(session).id
            for _ in range(20):
                status, body = get(f"{base}/v1/items/1/similar?k=5")
                assert status == 200, body
                assert body["index_version"] in {int(first["index_version"]), active}
        # The rerun completes (--full: a killed job may have published the new items already).
        second = fields(ok(invoke(env, "reindex", "--full")).stdout, "reindex")
        assert second["rebuilt"] == "yes" and second["items"] == str(FIRST + MORE)
        new_version = int(second["index_version"])
        assert new_version != int(first["index_version"])

        # Every request is answered by one of the two workers; both must switch.
        deadline, in_a_row = time.monotonic() + 30, 0
        while in_a_row < 10:
            assert time.monotonic() < deadline, f"still serving the old index:\n{log.read_text()}"
            status, body = get(f"{base}/v1/items/1/similar?k=5")
            assert status == 200, body
            in_a_row = in_a_row + 1 if body["index_version"] == new_version else 0
            time.sleep(0.05)
        status, ready = get(f"{base}/readyz")
        assert (status, ready["index_items"]) == (200, FIRST + MORE)
    finally:
        db.dispose()
        server.send_signal(signal.SIGTERM)  # `serve` exec'd gunicorn: this is its master
        server.wait(timeout=30)


def _raw_request(port: int, request: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(request)
    return sock


def _read_answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes its side."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_a_worker_takes_the_next_connection_without_waiting_for_the_client_to_close(
    tmp_path, cli_env
):
    """Sync workers close their side once answered (service.http_close): clients that keep
    their sockets open do not hold the workers, and an answer given before the request body
    was read still arrives whole (no reset)."""
    env = {**cli_env, "DRIFTREC_AUTH": "disabled"}
    ok(invoke(env, "db", "upgrade"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    server = spawn(env, "serve", "--workers", "2", "--port", str(port), log=log)
    held: list[socket.socket] = []
    try:
        wait_ready(base, server, log)
        # Two answered clients that never close: gunicorn's own close waited up to 2 s for
        # each, so the third request found both workers busy doing nothing.
        started = time.monotonic()
        for _ in range(3):
            held.append(_raw_request(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"))
            assert _read_answer(held[-1]).startswith(b"HTTP/1.1 200")
        assert time.monotonic() - started < 1.0

        # A body over the size limit is answered without being read: the worker lingers for
        # that client, and the 413 arrives intact.
        declared = 40 * 1024 * 1024
        sock = _raw_request(
            port,
            b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {declared}\r\n\r\n".encode(),
        )
        held.append(sock)
        sock.sendall(b"[" + b" " * (512 * 1024))
        answer = _read_answer(sock)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert b"payload_too_large" in answer
    finally:
        for sock in held:
            sock.close()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def test_a_connection_that_cannot_be_peeked_at_lingers_as_gunicorn_does(monkeypatch):
    """A TLS socket refuses recv flags; the close then falls back to gunicorn's linger."""
    from service import http_close

    class TlsLike:
        def gettimeout(self):
            return None

        def recv(self, size, flags=0):  # noqa: ARG002 - the shape of ssl.SSLSocket.recv
            raise ValueError("non-zero flags not allowed in calls to recv()")

    lingered = []
    monkeypatch.setattr(http_close, "_lingering_close", lambda sock, *_: lingered.append(sock))
    sock = TlsLike()
    http_close.close_after_answer(sock)  # type: ignore[arg-type]
    assert lingered == [sock]


def test_a_connection_with_a_read_timeout_is_peeked_at_without_waiting():
    """A socket with a timeout polls for that long before any recv, MSG_DONTWAIT or not."""
    from service import http_close

    server_side, client_side = socket.socketpair()
    with server_side, client_side:
        server_side.settimeout(3)
        started = time.monotonic()
        assert not http_close._has_unread_bytes(server_side)
        assert time.monotonic() - started < 0.5
        assert server_side.gettimeout() == 3
        client_side.sendall(b"x")
        assert http_close._has_unread_bytes(server_side)


def test_serve_and_demo_refuse_a_port_in_use_before_doing_anything(cli_env, tmp_path, monkeypatch):
    def no_exec(*args: object) -> None:
        raise AssertionError("serve went on to start gunicorn")

    monkeypatch.setattr("service.cli.os.execv", no_exec)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        ok(invoke(cli_env, "db", "upgrade"))
        for args in (("serve", "--port", port), ("demo", "--port", port, "--data", str(tmp_path))):
            result = invoke(cli_env, *args)
            assert result.exit_code == 1, result.output
            assert f"cannot listen on 127.0.0.1:{port}" in result.output
            assert "--port" in result.output
            # The demo stopped before its first step (the database).
            assert "== database" not in result.output


def _shell_commands(block: str) -> list[str]:
    """The commands of a copy-paste block: comment lines dropped, continued lines joined."""
    commands, current = [], ""
    for line in block.splitlines():
        if not current and (not line.strip() or line.startswith("#")):
            continue
        current += line.removesuffix("\\")
        if not line.endswith("\\"):
            commands.append(current)
            current = ""
    return commands


def _run_curl(command: str) -> tuple[int, dict]:
    """``command`` (a printed `curl -s ...` line) run by bash, as a user pasting it would."""
    done = subprocess.run(
        ["bash", "-c", command + " -w '\\n%{http_code}'"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    body, _, status = done.stdout.rpartition("\n")
    return int(status), json.loads(body)


def test_demo_prints_requests_that_work_with_the_key_it_created(tmp_path, cli_env, movielens_dir):
    # Auth on (the default): the printed requests carry the key the demo created, and work as
    # printed against `driftrec serve`.
    port = free_port()
    movies = write_movielens(movielens_dir, tmp_path / "ml", 0, FIRST)
    output = ok(invoke(cli_env, "demo", "--no-serve", "--port", str(port), "--data", str(movies)))
    printed = output.stdout.split("== try it", 1)[1].split("\n", 1)[1]
    commands = _shell_commands(printed)
    assert len(commands) == 4 and all(c.startswith("curl -s ") for c in commands), printed
    assert all("-H 'Authorization: Bearer drk_" in c for c in commands), printed

    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    server = spawn(cli_env, "serve", "--workers", "2", "--port", str(port), log=log)
    try:
        wait_ready(base, server, log)
        status, before = _run_curl(commands[0])
        assert status == 200 and before["items"], before
        status, similar = _run_curl(commands[1])
        assert status == 200 and similar["items"], similar
        status, posted = _run_curl(commands[2])
        assert status == 200 and posted["accepted"] == 1, posted
        status, after = _run_curl(commands[3])
        assert status == 200 and after["items"], after
        # The rated item (the most popular one the user had not rated) is seen now.
        rated = re.search(r'"item_id": "([^"]+)"', commands[2])
        assert rated and rated[1] not in [item["id"] for item in after["items"]]
        # Without the key the same request is refused.
        url = re.search(r"'(http://[^']+)'", commands[0])
        assert url and get(url[1])[0] == 401
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    assert "drk_" not in log.read_text()
