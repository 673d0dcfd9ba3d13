"""Engines and sessions. The caller owns the session and the transaction.

SQLite runs in WAL mode with a busy timeout. pysqlite's own transaction handling is switched off
so that SQLAlchemy emits BEGIN itself: read sessions use a deferred BEGIN, write sessions
``BEGIN IMMEDIATE`` so that concurrent writers queue on the lock instead of failing on upgrade.
On PostgreSQL, writers lock the rows they change (``SELECT ... FOR UPDATE``).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.exc import StaleDataError
from sqlalchemy.pool import NullPool

from store.liveness import check_connections_on_checkout

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 30_000
#: A writer waiting for SQLite's write lock tries again after this long, growing to the max.
WRITE_LOCK_POLL_S = 0.0002
WRITE_LOCK_POLL_MAX_S = 0.002
T = TypeVar("T")
#: Write transactions a job runs at once on PostgreSQL (`Database.write_lanes`), each on rows
#: of its own: a bulk import's INSERT (or a profile fold's) keeps one backend busy while the
#: job mostly waits for it. 200,000 imported events: 24.1-26.1k events/s with two against
#: 20.2-22.1k with one (a Zen 2 VM, five interleaved pairs).
PARALLEL_WRITERS = 2


def sqlite_file(url: str) -> str | None:
    """The database file of an SQLite ``url``; None for another database or an in-memory one."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return parsed.database


def make_engine(url: str, *, pool_size: int = 5, wal_autocheckpoint: int | None = None) -> Engine:
    """Create an engine for ``url`` with driftrec's connection settings (``wal_autocheckpoint``:
    SQLite's threshold in pages, default SQLite's 1,000)."""
    if make_url(url).get_backend_name() == "sqlite":
        path = sqlite_file(url)
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
            poolclass=NullPool if path is None else None,
        )
        _configure_sqlite(engine, wal_autocheckpoint)
        return engine
    engine = create_engine(url, pool_size=pool_size, max_overflow=pool_size)
    # Instead of pool_pre_ping's round trip at every checkout (see store.liveness).
    check_connections_on_checkout(engine)
    return engine


def _configure_sqlite(engine: Engine, wal_autocheckpoint: int | None) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN (below)
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes in WAL
        if wal_autocheckpoint is not None:
            cursor.execute(f"PRAGMA wal_autocheckpoint={int(wal_autocheckpoint)}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection):  # type: ignore[no-untyped-def]
        mode = connection.get_execution_options().get("sqlite_begin", "")
        if mode == "IMMEDIATE":
            _begin_immediate(connection)
        else:
            connection.exec_driver_sql(f"BEGIN {mode}".strip())


def _begin_immediate(connection: Connection) -> None:
    """``BEGIN IMMEDIATE``, waiting for the write lock by polling every fraction of a
    millisecond instead of through SQLite's busy handler.

    The busy handler sleeps 1, 2, 5, 10, 15, 20, 25 ... ms between tries, whether or not the
    lock was freed meanwhile: with two server workers taking turns on the lock for 1-10 ms
    transactions, a waiting worker slept well past the moment it could have gone on, and the
    worker's whole request with it. Polling hands the lock over within ~0.5 ms.

    The tries go to the DBAPI connection: a refused try through SQLAlchemy (which wraps the
    driver's error in its own, with the statement and a traceback) cost 77 us of CPU against 5
    us, and a single-event request, queued behind the other worker's transaction, made several
    of them. Only the last try, when the wait is given up, goes through SQLAlchemy, so what
    callers catch is SQLAlchemy's OperationalError as before.
    """
    raw = connection.connection.dbapi_connection
    assert raw is not None
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    pause = WRITE_LOCK_POLL_S
    raw.execute("PRAGMA busy_timeout=0")
    try:
        while time.monotonic() + pause <= deadline:
            try:
                raw.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if not _is_lock_contention(str(exc)):
                    break  # raised, wrapped, by the try below
            time.sleep(pause)
            pause = min(pause * 1.5, WRITE_LOCK_POLL_MAX_S)
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    finally:
        raw.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


class Database:
    """An engine with a read session factory and a write session factory.

    ``background_checkpoints`` (servers and jobs): on an SQLite file, a thread of this process
    copies the WAL into the database (`WalCheckpointer`) instead of the transaction whose
    commit crossed SQLite's threshold, so that a request (or a job's next batch) does not wait
    for it.
    """

    def __init__(self, url: str, *, background_checkpoints: bool = False) -> None:
        self.url = url
        path = sqlite_file(url)
        self._checkpointer = (
            WalCheckpointer(path) if background_checkpoints and path is not None else None
        )
        self.engine = make_engine(
            url, wal_autocheckpoint=None if self._checkpointer is None else FALLBACK_CHECKPOINT
        )
        write_engine = (
            self.engine.execution_options(sqlite_begin="IMMEDIATE")
            if is_sqlite(self.engine)
            else self.engine
        )
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(write_engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self._read() as session, session.begin():
            yield session

    @contextmanager
    def snapshot(self) -> Iterator[Session]:
        """A read transaction whose statements all see one snapshot of the database: on
        PostgreSQL REPEATABLE READ (its default READ COMMITTED lets each statement see what
        committed meanwhile); SQLite's read transactions are snapshots already."""
        with self.read() as session:
            if not is_sqlite(self.engine):
                session.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        """One write transaction: committed on success, rolled back on any exception."""
        with self._write() as session, session.begin():
            yield session

    def run_write(self, work: Callable[[Session], T], *, attempts: int = 8) -> T:
        """Run ``work`` in a write transaction, retrying transient lock/serialization failures."""
        for attempt in range(attempts):
            try:
                with self.write() as session:
                    return work(session)
            except (OperationalError, StaleDataError) as exc:
                if attempt == attempts - 1 or not _is_transient(exc):
                    raise
                delay = min(0.5, 0.01 * 2**attempt)
                log.warning(
                    "write retry attempt=%d delay_s=%.3f error=%s",
                    attempt + 1,
                    delay,
                    type(getattr(exc, "orig", exc)).__name__,
                )
                time.sleep(delay)
        raise AssertionError("unreachable")

    @property
    def write_lanes(self) -> int:
        """Write transactions a job runs at once (`run_writes`): `PARALLEL_WRITERS` on
        PostgreSQL; one on SQLite, which has a single writer."""
        return PARALLEL_WRITERS if self.dialect == "postgresql" else 1

    def run_writes(self, works: Iterable[Callable[[Session], T]]) -> Iterator[T]:
        """`run_write` of each of ``works``, up to `write_lanes` at once, each in a thread with
        a connection of its own; their results in the order of ``works``. The works must write
        rows no other of them locks, or they wait for each other. After an error no further
        work starts; those running finish (and commit) before it is raised."""
        lanes = self.write_lanes
        if lanes == 1:
            yield from map(self.run_write, works)
            return
        running: deque[Future[T]] = deque()
        with ThreadPoolExecutor(lanes, thread_name_prefix="write-lane") as pool:
            for work in works:
                if len(running) == lanes:
                    yield running.popleft().result()
                running.append(pool.submit(self.run_write, work))
            while running:
                yield running.popleft().result()

    def dispose(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
        self.engine.dispose()


#: A server's connections still checkpoint on commit past this many WAL pages (~40 MB): a
#: bound should the background checkpointer stall or fall behind (SQLite's default is 1,000).
FALLBACK_CHECKPOINT = 10_000
#: How often the background checkpointer copies committed WAL frames into the database. Each
#: checkpoint ends with an fsync of the database file, and a commit that writes the WAL meanwhile
#: (a writer that restarts the WAL syncs its header) can wait for it: smaller, more frequent
#: checkpoints make those waits shorter. Single events from 8 closed-loop clients through
#: `driftrec serve --workers 2` on a Zen 5 VM, four interleaved pairs of 20 s: every 0.03 s
#: the server handled them in p99.9 7.9-12.4 ms against 13.9-22.7 every 0.1 s, the clients' p99
#: 9.4-10.3 ms against 10.1-11.6; it costs batches of 100 events 1-6% of their rate.
CHECKPOINT_INTERVAL_S = 0.03


class WalCheckpointer:
    """A daemon thread with its own connection that runs ``PRAGMA wal_checkpoint(PASSIVE)``
    every `CHECKPOINT_INTERVAL_S`.

    SQLite otherwise checkpoints in the commit that takes the WAL past 1,000 pages: that
    transaction writes the pages into the database file and syncs it before it returns. In a
    server every event commit rewrites its users' profiles (18 KB each when this was measured,
    9 KB since), so about one event batch in twenty carried a checkpoint and held its worker
    18-20 ms instead of 4-8 (batches of 10; the 100k soak's load: recommendations waited for a
    free worker meanwhile). A passive checkpoint takes no lock that writers or readers wait
    for; the WAL still restarts from its beginning once every frame is copied. Started with
    its `Database`: in a server, each gunicorn worker builds its own after the fork.
    """

    def __init__(self, path: str, interval_s: float = CHECKPOINT_INTERVAL_S) -> None:
        self._path = path
        self._interval_s = interval_s
        self._stopped = threading.Event()
        self.runs = 0  #: checkpoints run (for tests and diagnostics)
        #: The last run's (busy, frames in the WAL, frames copied into the database).
        self.last: tuple[int, int, int] | None = None
        self._thread = threading.Thread(target=self._run, name="wal-checkpointer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        connection: sqlite3.Connection | None = None
        while not self._stopped.wait(self._interval_s):
            try:
                if connection is None:
                    # mode=rw: never create the file (a database removed under a running
                    # server is not recreated empty by its checkpointer).
                    uri = Path(self._path).resolve().as_uri() + "?mode=rw"
                    connection = sqlite3.connect(uri, uri=True, isolation_level=None)
                    connection.execute("PRAGMA busy_timeout=0")
                self.last = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                self.runs += 1
            except sqlite3.Error as exc:  # e.g. the file is not created yet: try again later
                log.debug("wal checkpoint skipped: %s", exc)
                if connection is not None:
                    connection.close()
                    connection = None
        if connection is not None:
            connection.close()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)


def _is_transient(exc: OperationalError | StaleDataError) -> bool:
    if isinstance(exc, StaleDataError):  # a concurrent writer bumped the profile version
        return True
    code = getattr(exc.orig, "sqlstate", None)
    return _is_lock_contention(str(exc.orig)) or code in {
        "40001",  # serialization failure
        "40P01",  # deadlock detected
    }


def _is_lock_contention(message: str) -> bool:
    """An SQLite error that another connection's lock caused."""
    message = message.lower()
    return "database is locked" in message or "database is busy" in message
