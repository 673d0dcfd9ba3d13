"""Engines and sessions. The caller owns the session and the transaction.

SQLite runs in WAL mode with a busy timeout. pysqlite's own transaction handling is switched off
so that SQLAlchemy emits BEGIN itself: read sessions use a deferred BEGIN, write sessions
``BEGIN IMMEDIATE`` so that concurrent writers queue on the lock instead of failing on upgrade.
On PostgreSQL, writers lock the rows they change (``SELECT ... FOR UPDATE``).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.exc import StaleDataError
from sqlalchemy.pool import NullPool

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 30_000
#: A writer waiting for SQLite's write lock tries again after this long, growing to the max.
WRITE_LOCK_POLL_S = 0.0002
WRITE_LOCK_POLL_MAX_S = 0.002
T = TypeVar("T")


def make_engine(url: str, *, pool_size: int = 5) -> Engine:
    """Create an engine for ``url`` with driftrec's connection settings."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
            poolclass=NullPool if parsed.database in (None, "", ":memory:") else None,
        )
        _configure_sqlite(engine)
        return engine
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN (below)
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes in WAL
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
    """An engine with a read session factory and a write session factory."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
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

    def dispose(self) -> None:
        self.engine.dispose()


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
