"""The real server: gunicorn with two workers over one SQLite database, spoken to over HTTP.

A write handled by one worker must be visible to the next request whichever worker serves it
(each refreshes its live index from the catalogue revision in the database). Auth is on: the
flow runs with an admin key, and a request without one is refused.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from store.db import Database
from store.keys import create_key
from store.migrate import upgrade
from store.settings import SettingsError, load_settings

REPO_ROOT = Path(__file__).resolve().parents[2]
GUNICORN = Path(sys.executable).with_name("gunicorn")
STARTUP_TIMEOUT_S = 90


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def create_admin_key(url: str) -> str:
    database = Database(url)
    try:
        with database.write() as session:
            return create_key(session, "gunicorn-test", ["admin"])[1]
    finally:
        database.dispose()


class Http:
    def __init__(self, base: str, key: str | None = None) -> None:
        self.base = base
        self.key = key

    def call(self, method: str, path: str, body: object = None, timeout: float = 120, key=None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        key = self.key if key is None else key
        if key:
            request.add_header("Authorization", f"Bearer {key}")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                raw = response.read()
                return response.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            return exc.code, json.loads(raw) if raw else None


@pytest.fixture
def server(tmp_path):
    yield from _serve(tmp_path)


def _serve(tmp_path, extra_env=None, extra_args=()):
    url = f"sqlite:///{tmp_path}/driftrec.db"
    upgrade(url)
    port = _free_port()
    env = {
        **os.environ,
        "DRIFTREC_DATABASE_URL": url,
        "DRIFTREC_DATA_DIR": str(tmp_path),
        "DRIFTREC_RELOAD_INTERVAL_S": "0.5",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO_ROOT),
        **(extra_env or {}),
    }
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                str(GUNICORN),
                "-w",
                "2",
                "-b",
                f"127.0.0.1:{port}",
                "--timeout",
                "180",
                "--no-control-socket",  # its default path is shared by every gunicorn on the host
                *extra_args,
                "service.app:create_app()",
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: master and workers end together
        )
    http = Http(f"http://127.0.0.1:{port}", create_admin_key(url))
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            assert process.poll() is None, log_path.read_text()
            try:
                if http.call("GET", "/readyz", timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "server not ready:\n" + log_path.read_text()
            time.sleep(0.3)
        yield http, log_path
    finally:
        process.send_signal(signal.SIGINT)  # quick shutdown; the test is done with it
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:  # workers tearing down torch can linger; not our test
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_items_written_through_one_worker_are_served_by_every_worker(server):
    http, log_path = server
    status, body = http.call("GET", "/v1/users/nobody/recommendations?k=3", key="")
    assert status == 401 and body["error"]["code"] == "unauthorized", body
    # Every worker loads its (empty) index before the write below.
    for _ in range(6):
        assert http.call("GET", "/v1/users/nobody/recommendations?k=3")[0] == 200

    items = [
        {"id": "mars", "title": "Rocket launch to Mars", "categories": ["space"]},
        {"id": "moon", "title": "Astronauts walking on the Moon", "categories": ["space"]},
        {"id": "pasta", "title": "Pasta carbonara recipe", "categories": ["food"]},
        {"id": "bread", "title": "Baking sourdough bread", "categories": ["food"]},
    ]
    status, body = http.call("PUT", "/v1/items", {"items": items})
    assert status == 200 and body["upserted"] == 4, body

    for _ in range(8):  # several connections: both workers answer some of them
        status, body = http.call("GET", "/v1/items/pasta/similar?k=1")
        assert status == 200 and [i["id"] for i in body["items"]] == ["bread"], body

    now = time.time()
    events = [
        {"id": "e1", "user_id": "ana", "item_id": "mars", "type": "like", "timestamp": now},
        {"id": "e2", "user_id": "ana", "item_id": "nope", "type": "like", "timestamp": now},
    ]
    status, body = http.call("POST", "/v1/events", {"events": events})
    assert status == 200 and body["accepted"] == 1 and body["rejected"][0]["index"] == 1

    for _ in range(6):
        status, body = http.call("GET", "/v1/users/ana/recommendations?k=1")
        assert status == 200 and body["strategy"] == "personalized", body
        assert [i["id"] for i in body["items"]] == ["moon"], body

    # A later upsert through whichever worker is also seen by every worker.
    late = {"id": "saturn", "title": "Rocket flight to Saturn", "categories": ["space"]}
    assert http.call("PUT", "/v1/items", {"items": [late]})[0] == 200
    # Recommendations read the catalogue revision with the profile: they see it at once too.
    for path in ("/v1/users/ana/recommendations?k=1", "/v1/items/mars/similar?k=1"):
        for _ in range(6):
            status, body = http.call("GET", path)
            assert status == 200 and [i["id"] for i in body["items"]] == ["saturn"], body

    assert http.call("DELETE", "/v1/items/saturn")[0] == 204
    for path in ("/v1/users/ana/recommendations?k=1", "/v1/items/mars/similar?k=1"):
        for _ in range(6):
            status, body = http.call("GET", path)
            assert status == 200 and [i["id"] for i in body["items"]] == ["moon"], body

    assert http.call("GET", "/v1/items/missing")[0] == 404
    log = log_path.read_text()
    assert "level=ERROR" not in log and "Traceback" not in log, log
    assert http.key not in log and "Bearer" not in log


# --- Hostile clients, against the server as `driftrec serve` configures it -----------------


CLIENT_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def configured_server(tmp_path_factory):
    """gunicorn with `service.gunicorn_conf`, as `driftrec serve` runs it (its worker class), with
    a 1 s client timeout."""
    yield from _serve(
        tmp_path_factory.mktemp("configured"),
        {"DRIFTREC_CLIENT_TIMEOUT_S": str(CLIENT_TIMEOUT_S)},
        ("--config", "python:service.gunicorn_conf"),
    )


def test_client_timeout_setting():
    assert load_settings({}).client_timeout_s == 5.0
    assert load_settings({"DRIFTREC_CLIENT_TIMEOUT_S": "0.5"}).client_timeout_s == 0.5
    for bad in ("0", "-1", "nan", "inf", "soon"):
        with pytest.raises(SettingsError, match="DRIFTREC_CLIENT_TIMEOUT_S"):
            load_settings({"DRIFTREC_CLIENT_TIMEOUT_S": bad})


def _port(http: Http) -> int:
    return int(http.base.rsplit(":", 1)[1])


def _post_head(http: Http, path: str, framing: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {http.key}\r\n".encode()
        + b"Content-Type: application/json\r\n"
        + framing
        + b"\r\n"
    )


def _chunked(body: bytes, size: int = 1 << 20) -> bytes:
    pieces = [
        f"{len(body[at : at + size]):x}\r\n".encode() + body[at : at + size] + b"\r\n"
        for at in range(0, len(body), size)
    ]
    return b"".join(pieces) + b"0\r\n\r\n"


def _exchange(http: Http, data: bytes, timeout: float = 5) -> tuple[bytes, float]:
    """Send raw bytes; everything the server sends until it closes, and how long that took."""
    with socket.create_connection(("127.0.0.1", _port(http)), timeout=timeout) as sock:
        started = time.monotonic()
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks), time.monotonic() - started


def _status_and_error(answer: bytes) -> tuple[int, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)["error"]


def _assert_quiet_log(log_path: Path) -> None:
    log = log_path.read_text()
    for noise in ("level=ERROR", "[ERROR]", "Traceback", "WORKER TIMEOUT"):
        assert noise not in log, log


def test_clients_that_stall_mid_request_are_dropped_while_others_are_served(configured_server):
    """Each sync worker used to wait in recv for gunicorn's worker timeout (60 s, then a 500):
    two such clients stopped the server. Now a read waits DRIFTREC_CLIENT_TIMEOUT_S."""
    http, log_path = configured_server
    port = _port(http)
    # Headers without their blank line, one connection per worker.
    stalled = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(2)]
    try:
        for sock in stalled:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        time.sleep(0.2)  # each worker is reading one of them
        started = time.monotonic()
        assert http.call("GET", "/healthz", timeout=5)[0] == 200
        assert time.monotonic() - started < CLIENT_TIMEOUT_S + 1.5
        for sock in stalled:  # dropped without an answer (no 500)
            assert sock.recv(65536) == b""
    finally:
        for sock in stalled:
            sock.close()

    # A body shorter than its Content-Length, a chunk that never comes: 408 once it stalls.
    short = _post_head(http, "/v1/events", b"Content-Length: 1000\r\n") + b'{"events":[]}'
    endless = _post_head(http, "/v1/events", b"Transfer-Encoding: chunked\r\n")
    for request in (short, endless + b"ffffffffffffffffffff\r\n{", endless + b"d\r\n{"):
        answer, took = _exchange(http, request)
        assert _status_and_error(answer) == (
            408,
            {"code": "request_timeout", "message": "the client stopped sending the request body"},
        ), answer
        assert CLIENT_TIMEOUT_S - 0.1 < took < CLIENT_TIMEOUT_S + 1.5

    # The same short body from a client that then closes its side: a 400 at once, not the
    # truncated body taken as the whole one.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(short)
        sock.shutdown(socket.SHUT_WR)
        answer = b"".join(iter(lambda: sock.recv(65536), b""))
    assert _status_and_error(answer) == (
        400,
        {"code": "bad_request", "message": "the request body ended before its Content-Length"},
    ), answer
    _assert_quiet_log(log_path)


def test_a_malformed_chunked_body_is_a_json_400(configured_server):
    """gunicorn's body parser raised its own exceptions through the app: a 500 and a traceback."""
    http, log_path = configured_server
    head = _post_head(http, "/v1/search", b"Transfer-Encoding: chunked\r\n")
    bodies = {
        "Invalid chunk size": b"ZZ\r\nabc\r\n0\r\n\r\n",
        "extension": b'd;\x01\r\n{"query":"x"}\r\n0\r\n\r\n',
        "terminator": b'd\r\n{"query":"x"}XX0\r\n\r\n',
        "Header": b'd\r\n{"query":"x"}\r\n0\r\nno colon\r\n\r\n',
    }
    for fault, body in bodies.items():
        answer, _ = _exchange(http, head + body)
        status, error = _status_and_error(answer)
        assert (status, error["code"]) == (400, "bad_request"), answer
        assert error["message"].startswith("malformed request body: ") and fault in error["message"]
    _assert_quiet_log(log_path)


def test_a_chunked_body_past_the_size_limit_is_a_413(configured_server):
    """Werkzeug cut a chunked body at MAX_CONTENT_LENGTH and went on with what it had read."""
    http, log_path = configured_server
    limit = 32 * 1024 * 1024
    head = _post_head(http, "/v1/events", b"Transfer-Encoding: chunked\r\n")
    declared = _post_head(http, "/v1/events", f"Content-Length: {limit + 1}\r\n".encode())
    status, too_large = _status_and_error(_exchange(http, declared)[0])
    assert (status, too_large["code"]) == (413, "payload_too_large")
    at_limit = b'{"events":[]}'.ljust(limit)
    answer, _ = _exchange(http, head + _chunked(at_limit + b"garbage"), timeout=30)
    assert _status_and_error(answer) == (413, too_large), answer[:300]
    # A chunked body of exactly the limit is read whole.
    answer, _ = _exchange(http, head + _chunked(at_limit), timeout=30)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    _assert_quiet_log(log_path)


def test_what_gunicorn_refuses_before_the_app_is_answered_in_json(configured_server):
    """A request line past gunicorn's limit (4,094 bytes), a malformed header: answered by
    gunicorn itself, in the API's error shape rather than an HTML page."""
    http, log_path = configured_server
    long_line = f"GET /v1/items/{'x' * 5000} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    answer, _ = _exchange(http, long_line)
    status, error = _status_and_error(answer)
    assert (status, error["code"]) == (414, "uri_too_long"), answer[:300]
    assert b"Content-Type: application/json" in answer.partition(b"\r\n\r\n")[0]
    answer, _ = _exchange(http, b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
    status, error = _status_and_error(answer)
    assert (status, error["code"]) == (400, "bad_request") and error["message"], answer[:300]
    _assert_quiet_log(log_path)
