"""`driftrec serve` runs real gunicorn workers that switch to a new index version while serving."""

from __future__ import annotations

import json
import signal
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

from cli_helpers import fields, invoke, ok, spawn, write_items_jsonl, write_movielens

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
    try:
        assert wait_ready(base, server, log)["index_version"] == int(first["index_version"])
        status, body = get(f"{base}/v1/items/1/similar?k=5")
        assert status == 200, body
        assert body["index_version"] == int(first["index_version"])
        assert len(body["items"]) == 5

        # New items arrive through the bulk path (not the API), then a job publishes a version.
        more = write_items_jsonl(movielens_dir, tmp_path / "more.jsonl", FIRST, FIRST + MORE)
        ok(invoke(env, "import", "items", str(more)))
        second = fields(ok(invoke(env, "reindex")).stdout, "reindex")
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
