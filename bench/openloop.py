"""The open-loop sender of `bench.loadgen` (``--rate``): requests go out at fixed scheduled times
from one thread over non-blocking sockets, however many are still unanswered.

The earlier open loop ran 8 threads on ``http.client``, each sending its share of the schedule
one request at a time: at most 8 requests were ever out, so when the server fell behind the
backlog built up inside the generator rather than at the server, and the threads' CPU time
(``http.client``, the GIL handed between them) came out of the same two cores the server was
measured on. Here each request costs one socket and a few system calls; latency still counts
from the scheduled moment (no coordinated omission), as wrk2 does.

The server's sync workers close every connection after their response (``Connection:
close``), so a response ends where the server closes, or earlier at its Content-Length.
"""

from __future__ import annotations

import errno
import selectors
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

#: Requests still unanswered at once, at most (each holds a socket); past it, sends wait.
MAX_OUTSTANDING = 512
REQUEST_TIMEOUT_S = 30.0
_HEADER_END = b"\r\n\r\n"


@dataclass
class _Pending:
    scheduled: float
    payload: bytes
    sent: int = 0
    received: bytearray = field(default_factory=bytearray)


@dataclass
class OpenLoopResult:
    """Per request, in the order they completed: (scheduled seconds since start, latency s, ok)."""

    timeline: list[tuple[float, float, bool]] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    #: Per request, in the order they were sent: how late (s) after its scheduled moment this
    #: generator opened its connection. Latency counts from the schedule, so a generator that
    #: fell behind (starved of CPU on the machine it shares with the server) adds this much.
    late: list[float] = field(default_factory=list)


def http_request(
    method: str, path: str, body: str | None, host: str, headers: dict[str, str]
) -> bytes:
    """The bytes of one HTTP/1.1 request that asks the server to close after answering."""
    data = body.encode() if body is not None else b""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body is not None:
        lines.append(f"Content-Length: {len(data)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


def response_status(received: bytes) -> str | None:
    """The status code of a complete response ("200"), or None while it is incomplete."""
    head_end = received.find(_HEADER_END)
    if head_end < 0:
        return None
    head = received[:head_end].decode("latin-1").split("\r\n")
    for line in head[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            if len(received) - head_end - len(_HEADER_END) < int(value):
                return None
            break
    else:
        return None  # no length: the body ends where the server closes
    return head[0].split(" ", 2)[1]


def run_open_loop(
    address: tuple[str, int],
    next_request: Callable[[], bytes],
    *,
    rate: float,
    duration: float,
) -> OpenLoopResult:
    """Send ``next_request()`` at ``rate`` a second for ``duration`` seconds and wait for
    every answer (or its `REQUEST_TIMEOUT_S`)."""
    result = OpenLoopResult()
    selector = selectors.DefaultSelector()
    interval = 1.0 / rate
    total = int(duration * rate)
    origin = time.perf_counter()
    sent = 0
    next_expiry_check = origin + 1.0

    def record(scheduled: float, status: str) -> None:
        latency = time.perf_counter() - scheduled
        result.timeline.append((scheduled - origin, latency, status.startswith("2")))
        result.statuses[status] += 1

    def finish(sock: socket.socket, pending: _Pending, status: str) -> None:
        selector.unregister(sock)
        sock.close()
        record(pending.scheduled, status)

    def start(scheduled: float) -> None:
        result.late.append(time.perf_counter() - scheduled)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        pending = _Pending(scheduled, next_request())
        code = sock.connect_ex(address)
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            record(scheduled, errno.errorcode.get(code, str(code)))
            return
        selector.register(sock, selectors.EVENT_WRITE, pending)

    def on_ready(sock: socket.socket, pending: _Pending, events: int) -> None:
        try:
            if events & selectors.EVENT_WRITE:
                error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if error:
                    finish(sock, pending, errno.errorcode.get(error, str(error)))
                    return
                pending.sent += sock.send(pending.payload[pending.sent :])
                if pending.sent == len(pending.payload):
                    selector.modify(sock, selectors.EVENT_READ, pending)
                return
            chunk = sock.recv(65536)
        except BlockingIOError:  # a spurious wake-up: wait for the next
            return
        except OSError as exc:
            finish(sock, pending, type(exc).__name__)
            return
        pending.received += chunk
        status = response_status(bytes(pending.received))
        if status is None and not chunk:  # closed: complete if it had a status line at all
            line = bytes(pending.received).split(b"\r\n", 1)[0].split(b" ")
            status = line[1].decode() if len(line) > 1 else "ConnectionClosed"
        if status is not None:
            finish(sock, pending, status)

    while sent < total or selector.get_map():
        now = time.perf_counter()
        while sent < total and origin + sent * interval <= now:
            if len(selector.get_map()) >= MAX_OUTSTANDING:
                break
            start(origin + sent * interval)
            sent += 1
        if sent < total and len(selector.get_map()) < MAX_OUTSTANDING:
            wait = origin + sent * interval - time.perf_counter()
        else:  # nothing to send until an answer comes (or a timeout is due)
            wait = 0.05
        for key, events in selector.select(timeout=max(0.0, wait)):
            on_ready(key.fileobj, key.data, events)  # type: ignore[arg-type]
        if time.perf_counter() >= next_expiry_check:  # once a second: a scan of every socket
            next_expiry_check += 1.0
            expired = time.perf_counter() - REQUEST_TIMEOUT_S
            for key in list(selector.get_map().values()):
                if key.data.scheduled < expired:
                    finish(key.fileobj, key.data, "timeout")  # type: ignore[arg-type]
    result.seconds = time.perf_counter() - origin
    selector.close()
    return result
