"""The Flask app factory: ``create_app(test_config=None)``, as in Flask's flaskr tutorial.

One `Runtime` per app (``app.extensions["driftrec"]``) holds the database, the live index and the
models. The app refuses to start when the database schema is behind the migrations. Nothing heavy
happens at startup: the embedding model loads on the first request that needs it, and the live
index is refreshed on the first request that touches it (so ``--preload`` and forking are safe).
Run it with ``gunicorn 'service.app:create_app()'``.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
from collections import deque
from typing import Any, TextIO

from flask import Flask, Response, g, request

from service.api import register_blueprints
from service.api.common import METRICS_KEY, RUNTIME_KEY, get_metrics, get_runtime
from service.auth import OPEN_ENDPOINTS, init_auth
from service.errors import register_error_handlers
from service.metrics import Metrics
from service.runtime import Runtime
from store.migrate import ensure_schema_current
from store.settings import Settings, load_settings

log = logging.getLogger(__name__)

#: Endpoints that must answer without touching the database or the index: the open ones.
_NO_RUNTIME = OPEN_ENDPOINTS
DEFAULT_MAX_CONTENT_LENGTH = 32 * 1024 * 1024


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the app. ``test_config`` may carry ``"settings"`` (a `Settings`) and Flask config."""
    config = dict(test_config or {})
    settings = config.pop("settings", None)
    if not isinstance(settings, Settings):
        settings = load_settings()
    configure_logging(settings.log_level)

    app = Flask(__name__)
    app.config.from_mapping(
        MAX_CONTENT_LENGTH=DEFAULT_MAX_CONTENT_LENGTH,
        JSON_SORT_KEYS=False,
    )
    app.config.update(config)
    app.json.sort_keys = False  # type: ignore[attr-defined]

    runtime = Runtime(settings, serving=True)
    try:
        ensure_schema_current(runtime.db.engine)  # SchemaOutOfDate names `driftrec db upgrade`
    except BaseException:
        runtime.close()
        raise
    app.extensions[RUNTIME_KEY] = runtime
    app.extensions[METRICS_KEY] = Metrics()

    register_error_handlers(app)
    register_blueprints(app)
    app.before_request(_before_request)
    init_auth(
        app, settings.auth_enabled, settings.auth_cache_s
    )  # runs before _before_request loads the index
    # The clock starts first of all: a request's logged duration includes the auth check.
    app.before_request_funcs.setdefault(None, []).insert(0, _start_clock)
    app.after_request(_after_request)
    log.info(
        "app created database=%s data_dir=%s model=%s auth=%s",
        runtime.db.engine.url.render_as_string(hide_password=True),
        settings.data_dir,
        settings.embedder_model,
        settings.auth,
    )
    return app


def _start_clock() -> None:
    g.started = time.perf_counter()


def _before_request() -> None:
    if request.endpoint not in _NO_RUNTIME:
        index = get_runtime().index
        if not index.loaded:
            index.refresh()  # first request: load the active index version


def _after_request(response: Response) -> Response:
    started = g.get("started")
    seconds = time.perf_counter() - started if started is not None else 0.0
    rule = request.url_rule
    endpoint = rule.rule if rule is not None else "<unmatched>"
    metrics = get_metrics()
    metrics.observe_request(request.method, endpoint, response.status_code, seconds)
    index = get_runtime().index
    if index.loaded:
        metrics.index_size.set(len(index))
    # The app's own time (W3C Server-Timing): a client can tell it from the time its request
    # waited for a worker, to be accepted and parsed, which is most of a slow request's latency
    # on a busy server (README, Benchmarks).
    response.headers["Server-Timing"] = f"app;dur={seconds * 1000:.2f}"
    # Only method, rule and status: paths carry user ids and headers may carry credentials.
    log.info(
        "request method=%s endpoint=%s status=%d duration_ms=%.1f",
        request.method,
        endpoint,
        response.status_code,
        seconds * 1000,
    )
    return response


class KeyValueFormatter(logging.Formatter):
    """One line per record: ``ts= level= pid= logger= msg="..."`` (plus ``exc=`` if any)."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage().replace("\n", " ")
        line = (
            f"ts={self.formatTime(record, '%Y-%m-%dT%H:%M:%S')} level={record.levelname} "
            f'pid={record.process} logger={record.name} msg="{message}"'
        )
        if record.exc_info:
            trace = self.formatException(record.exc_info).replace("\n", "\\n")
            line += f' exc="{trace}"'
        return line


def configure_logging(level: str) -> None:
    """Structured logs on stderr, unless the host (CLI, gunicorn, pytest) configured logging.

    Lines are written by a thread of their own (`BackgroundLogHandler`). A server worker logs
    a line per request, and a ``write`` to a file-backed stderr can block behind the
    filesystem's journal while SQLite syncs its WAL: with the log on the database's disk,
    requests stalled between answers (not inside them) for up to ~100 ms (100k items, 786
    recommendations/s open loop with events: p99 10.6-19.2 ms and 176-381 answers over 30 ms
    a minute, against 6.8-7.2 ms and 26-97 with the same log on tmpfs).
    """
    root = logging.getLogger()
    if not root.handlers:
        handler = BackgroundLogHandler()
        handler.setFormatter(KeyValueFormatter())
        root.addHandler(handler)
        root.setLevel(level.upper())


class BackgroundLogHandler(logging.Handler):
    """Formats a record on the thread that logs it; a thread of the process writes the lines,
    all that waited, every `interval` seconds.

    A line is appended without waking the writer: with a queue that woke it for every line
    (one ``write`` each), a line cost the process 71-92 us of CPU, batched 29-47 us (in
    process, a line per millisecond of work); a server worker logs a line per request. At
    most `capacity` lines wait; past it the logging thread writes them itself (blocking as a
    direct write would: memory stays bounded when the sink stalls). A forked child starts its
    own buffer and writer (threads do not survive a fork), and a normal exit writes what
    waits; lines waiting when a process is killed (-9) are lost: up to `interval` seconds.
    """

    def __init__(
        self, stream: TextIO | None = None, capacity: int = 10_000, interval: float = 0.05
    ) -> None:
        super().__init__()
        self.stream = stream if stream is not None else sys.stderr
        self.capacity, self.interval = capacity, interval
        self._start()
        os.register_at_fork(after_in_child=self._start)
        atexit.register(self.stop)

    def _start(self) -> None:
        # In a forked child, anew: the parent's writer may have held the lock at the fork, and
        # the lines it had waiting are the parent's to write.
        self._lines: deque[str] = deque()
        self._write_lock = threading.Lock()
        self._stopping = threading.Event()
        self._writer = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._writer.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # noqa: BLE001 - logging's own contract: report, never raise
            self.handleError(record)
            return
        self._lines.append(line)  # atomic against the writer's popleft: no wake-up needed
        if len(self._lines) >= self.capacity:
            self.write_waiting()

    def _run(self) -> None:
        while not self._stopping.wait(self.interval):
            self.write_waiting()

    def write_waiting(self) -> None:
        """Write every line that waits, in one write."""
        with self._write_lock:
            lines = []
            while self._lines:
                lines.append(self._lines.popleft())
            if not lines:
                return
            try:
                self.stream.write("\n".join(lines) + "\n")
                self.stream.flush()
            except (OSError, ValueError):  # a closed or failing sink: the lines are lost
                pass

    def stop(self) -> None:
        self._stopping.set()
        self._writer.join(timeout=5)
        self.write_waiting()
