"""Recommendation sessions written off the request path: queued by the request, committed in
batches by one thread per process.

Every answer has a session row (`recomm_id` paging, attribution in `/v1/stats`). Written by the
request, it cost each recommendation a write transaction: on SQLite the write lock, taken in
turn with the other worker and with every event writer, and ~8% of a worker's CPU at 100k items
(one py-spy profile under load). Queued, the rows of the requests served while one batch
commits go into the next one.

A row is committed within ~50 ms of its answer (`LINGER_S`). Readers that need it wait:
`flush` for the rows this process queued, `service.recommending.stored_session` for an id
another process issued a moment ago. Rows still queued when a process is killed (-9) are
lost: a client paging such an answer gets a 404 and asks again; events are never queued here.
"""

from __future__ import annotations

import atexit
import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any

from store.db import Database
from store.recommendations import insert_sessions

log = logging.getLogger(__name__)

#: Rows per INSERT at most (a batch larger than this is split over several transactions).
MAX_BATCH = 512
#: How long the first row of a batch waits for others to join it. A transaction's own work
#: (the Session, BEGIN IMMEDIATE, the commit) costs the writer ~1 ms of CPU on a slow 2-core VM
#: and each row past it ~0.02 ms: at 20 ms a worker answering 170 recommendations/s (100k
#: items, SQLite) committed ~4 rows a time and its writer thread took 0.33 ms of CPU a row, at
#: 50 ms 0.16 (with the INSERT on the DBAPI cursor, `store.recommendations`). Readers of a
#: row this process queued do not wait for the linger (`flush`); other processes' readers
#: wait for a just-issued id up to `service.recommending.JUST_ISSUED_WAIT_S`.
LINGER_S = 0.05
#: How long `flush` waits for the writer before giving up (it logs and goes on).
FLUSH_TIMEOUT_S = 10.0

_writers: weakref.WeakSet[SessionWriter] = weakref.WeakSet()


class SessionWriter:
    """Queue `store.recommendations.session_row` rows; a daemon thread, started on the first
    row, inserts what is queued in one transaction at a time."""

    def __init__(self, db: Database, *, write: Callable[[Database, list], None] | None = None):
        self._db = db
        self._write = write or _insert
        self._pending: list[dict[str, Any]] = []
        self._queued = 0  # rows ever queued
        self._done = 0  # rows ever handled (committed, or logged as lost)
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._flushing = 0  # callers waiting in flush: no lingering then
        _writers.add(self)

    def add(self, row: dict[str, Any]) -> None:
        with self._cond:
            if self._closed:  # after close (process exit): write it here and now
                self._write(self._db, [row])
                return
            self._pending.append(row)
            self._queued += 1
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="session-writer", daemon=True
                )
                self._thread.start()
            if len(self._pending) == 1:
                # Only a writer waiting for a first row needs waking. Woken on every row, the
                # lingering writer took the GIL from the request each time just to go back to
                # sleep (~3% of a worker's samples under load, py-spy at 100k items).
                self._cond.notify_all()

    def flush(self, timeout: float = FLUSH_TIMEOUT_S) -> bool:
        """Wait until every row queued so far is committed; False on timeout."""
        with self._cond:
            target = self._queued
            self._flushing += 1
            self._cond.notify_all()
            try:
                done = self._cond.wait_for(lambda: self._done >= target, timeout)
            finally:
                self._flushing -= 1
        if not done:
            log.warning(
                "session writer: %d rows still queued after %.0fs", target - self._done, timeout
            )
        return done

    def close(self) -> None:
        """Write what is queued and stop the thread; later rows are written synchronously."""
        self.flush()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=FLUSH_TIMEOUT_S)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._closed)
                if not self._pending:
                    return
                if not self._closed:  # let the rows of the next few requests join this batch
                    self._cond.wait_for(lambda: self._closed or self._flushing, LINGER_S)
                batch = self._pending[:MAX_BATCH]
                del self._pending[:MAX_BATCH]
            try:
                self._write(self._db, batch)
            except Exception:  # noqa: BLE001 - one failed batch must not stop the writer
                log.exception("session writer: %d recommendation sessions lost", len(batch))
            with self._cond:
                self._done += len(batch)
                self._cond.notify_all()


def _insert(db: Database, rows: list[dict[str, Any]]) -> None:
    db.run_write(lambda session: insert_sessions(session, rows))


@atexit.register
def _flush_all() -> None:
    """A worker that exits normally (gunicorn's graceful stop) writes what it queued first."""
    for writer in list(_writers):
        writer.close()
