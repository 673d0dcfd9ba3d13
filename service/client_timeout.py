"""Drop a client that stalls while its request is read, without losing the worker.

A sync worker reads a request with blocking ``recv`` calls; gunicorn puts no limit on them, so a
client that sends part of a request (headers without the blank line, a body shorter than its
``Content-Length``, a chunk it never finishes) held the worker until gunicorn's worker timeout
(60 s) killed it, answering a 500. Two such connections stopped a two-worker server.

`SyncWorker` gives every connection a read timeout (``DRIFTREC_CLIENT_TIMEOUT_S``) and reads
through a `ClientSocket`, whose ``recv`` reports a read that waited that long as the end of the
stream, as if the client had closed: gunicorn then ends the connection quietly as a premature
disconnection (a debug line, no traceback, no 500), and a body read by the app comes up short
(`service.validation` answers 408 when `stalled` says why). The timeout bounds each wait, not
the whole request: a client that trickles a byte now and then still holds a worker; only a
buffering proxy in front (nginx) protects against many slow clients.

The worker also answers what gunicorn refuses before the app (a request line too long, a
malformed header) in the API's JSON error shape (`SyncWorker.handle_error`), not as HTML.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator, Mapping
from typing import Any

from gunicorn import util
from gunicorn.workers import sync

from service.errors import HTTP_CODES, error_body
from store.settings import load_settings


class ClientSocket(socket.socket):
    """A client connection whose reads that time out read as its end; `stalled` records it."""

    stalled = False

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        try:
            return super().recv(bufsize, flags)
        except TimeoutError:  # socket.timeout: only a socket with a timeout raises it
            self.stalled = True
            return b""


class SyncWorker(sync.SyncWorker):
    """gunicorn's sync worker, with a read timeout on every connection it accepts."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.client_timeout = load_settings().client_timeout_s

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        """gunicorn's own answers to what it refuses before the app (a request line past 4,094
        bytes: 414; a malformed header: 400; too many headers: 431) in the API's JSON error
        shape instead of an HTML page."""
        with _json_errors():
            super().handle_error(req, client, addr, exc)

    def accept(self, listener: socket.socket) -> None:  # as SyncWorker.accept, plus the timeout
        accepted, addr = listener.accept()
        client = ClientSocket(accepted.family, accepted.type, accepted.proto, accepted.detach())
        client.settimeout(self.client_timeout)
        util.close_on_exec(client)
        self.handle(listener, client, addr)


def stalled(environ: Mapping[str, Any]) -> bool:
    """Whether this request's client went quiet for the read timeout while it was read."""
    return bool(getattr(environ.get("gunicorn.socket"), "stalled", False))


def write_json_error(sock: socket.socket, status: int, reason: str, message: str) -> None:
    """What `gunicorn.util.write_error` writes, as ``{"error": {"code", "message"}}``."""
    code = HTTP_CODES.get(status, "bad_request" if 400 <= status < 500 else "internal_error")
    body = json.dumps(error_body(code, message)).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    util.write_nonblock(sock, head.encode("latin-1") + body)


@contextlib.contextmanager
def _json_errors() -> Iterator[None]:
    """gunicorn's error writer swapped for `write_json_error` (a sync worker runs one request
    at a time, so nothing else writes an error meanwhile)."""
    html = util.write_error
    util.write_error = write_json_error
    try:
        yield
    finally:
        util.write_error = html
