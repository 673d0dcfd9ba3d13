"""SQLite write transactions: the write lock passes to a waiting writer as soon as it is free."""

import sqlite3
import statistics
import threading
import time
from functools import partial

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

import store.db
from store.db import SQLITE_BUSY_TIMEOUT_MS, Database


def _lateness_after_release(db: Database, hold_s: float) -> float:
    """Seconds between one writer releasing the lock and a waiting writer getting it."""
    released = [0.0]
    holding = threading.Event()

    def holder() -> None:
        with db.write() as session:
            session.execute(text("SELECT 1"))
            holding.set()
            time.sleep(hold_s)
            released[0] = time.monotonic()

    thread = threading.Thread(target=holder)
    thread.start()
    holding.wait(5)
    with db.write() as session:
        session.execute(text("SELECT 1"))  # BEGIN IMMEDIATE: waits for the lock
        acquired = time.monotonic()
        # The busy timeout is back for everything else the transaction does.
        assert session.execute(text("PRAGMA busy_timeout")).scalar() == SQLITE_BUSY_TIMEOUT_MS
    thread.join()
    return acquired - released[0]


def test_a_waiting_writer_gets_the_lock_within_milliseconds_of_its_release(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'lock.db'}")
    try:
        # SQLite's own busy handler would wake at 78 ms into a 60 ms hold (sleeps of 1, 2, 5,
        # 10, 15, 20, 25 ms): 18 ms late.
        lateness = [_lateness_after_release(db, hold_s=0.06) for _ in range(5)]
    finally:
        db.dispose()
    assert statistics.median(lateness) < 0.008, lateness


def test_a_writer_that_gives_up_waiting_raises_sqlalchemys_error(tmp_path, monkeypatch):
    """The wait is bounded by the busy timeout; what the caller then gets is SQLAlchemy's
    OperationalError (what `Database.run_write` retries), with the busy timeout restored."""
    path = tmp_path / "locked.db"
    db = Database(f"sqlite:///{path}")
    with db.write() as session:
        session.execute(text("CREATE TABLE t (x INTEGER)"))
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    monkeypatch.setattr(store.db, "SQLITE_BUSY_TIMEOUT_MS", 50)
    try:
        started = time.monotonic()
        with pytest.raises(OperationalError, match="database is locked"):
            with db.write() as session:
                session.execute(text("INSERT INTO t VALUES (1)"))
        assert 0.04 <= time.monotonic() - started < 2
        holder.execute("COMMIT")
        with db.write() as session:
            session.execute(text("INSERT INTO t VALUES (2)"))
            assert session.execute(text("PRAGMA busy_timeout")).scalar() == 50
        with db.read() as session:
            assert session.execute(text("SELECT x FROM t")).scalars().all() == [2]
    finally:
        holder.close()
        db.dispose()


def _wal_autocheckpoint(db: Database) -> int:
    with db.engine.connect() as connection:
        return connection.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one()


def _wal_frames(path) -> int:
    """Frames in the WAL file (its 32-byte header, then a 24-byte header and a page each)."""
    wal = path.with_name(path.name + "-wal")
    size = wal.stat().st_size if wal.exists() else 0
    return max(0, size - 32) // (24 + 4096)


def test_a_server_database_checkpoints_the_wal_off_the_committing_transaction(tmp_path):
    path = tmp_path / "server.db"
    db = Database(f"sqlite:///{path}", background_checkpoints=True)
    checkpointer = db._checkpointer
    assert checkpointer is not None
    try:
        # Commits no longer checkpoint at SQLite's 1,000 pages, only past the fallback bound.
        assert _wal_autocheckpoint(db) == store.db.FALLBACK_CHECKPOINT
        with db.write() as session:
            session.execute(text("CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB)"))
        for batch in range(3):
            with db.write() as session:
                session.execute(
                    text("INSERT INTO blobs (data) VALUES (:data)"),
                    [{"data": bytes([batch]) * 18_000} for _ in range(100)],
                )
        # ~1,500 pages committed; the thread copies them into the database file.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            last = checkpointer.last
            if last is not None and last[0] == 0 and last[1] > 1_000 and last[2] == last[1]:
                break
            time.sleep(0.05)
        assert checkpointer.last is not None
        busy, frames, copied = checkpointer.last
        assert busy == 0 and frames > 1_000 and copied == frames
        assert _wal_frames(path) >= frames  # the commits wrote the WAL; nobody truncated it
        assert path.stat().st_size > 3 * 100 * 18_000  # ... and the rows reached the file
    finally:
        db.dispose()
    assert not checkpointer._thread.is_alive()


def test_other_databases_keep_sqlites_own_checkpoints(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'job.db'}")
    try:
        assert db._checkpointer is None
        assert _wal_autocheckpoint(db) == 1000
    finally:
        db.dispose()


def test_the_checkpointer_never_creates_a_database_file(tmp_path):
    path = tmp_path / "absent.db"
    checkpointer = store.db.WalCheckpointer(str(path), interval_s=0.01)
    try:
        time.sleep(0.2)
        assert checkpointer.runs == 0
        assert not path.exists()
    finally:
        checkpointer.stop()


def test_run_writes_runs_a_lane_per_writer_and_returns_results_in_order(database_url):
    # On PostgreSQL two works at once (they meet at the barrier), on SQLite one: either way the
    # results come in the order of the works, though the first ones finish last.
    db = Database(database_url)
    lanes = db.write_lanes
    assert lanes == (2 if db.dialect == "postgresql" else 1)
    together = threading.Barrier(lanes, timeout=10)

    def work(number: int, session) -> int:  # type: ignore[no-untyped-def]
        session.execute(text("SELECT 1"))
        together.wait()
        time.sleep(0.05 * (lanes - 1 - number % lanes))
        return number

    try:
        works = [partial(work, n) for n in range(6)]
        assert list(db.run_writes(works)) == list(range(6))
    finally:
        db.dispose()


def test_run_writes_starts_nothing_after_an_error_and_lets_running_work_finish(database_url):
    db = Database(database_url)
    started: list[int] = []
    finished: list[int] = []

    def work(number: int, session) -> int:  # type: ignore[no-untyped-def]
        started.append(number)
        if number == 0:
            raise ValueError("the first work fails")
        time.sleep(0.2)
        finished.append(number)
        return number

    try:
        works = (partial(work, n) for n in range(5))
        with pytest.raises(ValueError, match="first work"):
            list(db.run_writes(works))
        # The works already running when the error came (the second lane's, on PostgreSQL)
        # finished before it was raised; none started after it.
        assert sorted(started) == list(range(db.write_lanes))
        assert sorted(finished) == list(range(1, db.write_lanes))
    finally:
        db.dispose()


def test_run_write_retries_transient_failures_and_gives_up_after_its_attempts(
    tmp_path, monkeypatch
):
    from sqlalchemy.orm.exc import StaleDataError

    db = Database(f"sqlite:///{tmp_path / 'retry.db'}")
    monkeypatch.setattr(store.db.time, "sleep", lambda _s: None)
    locked = OperationalError("INSERT", {}, sqlite3.OperationalError("database is locked"))
    missing = OperationalError("SELECT", {}, sqlite3.OperationalError("no such table: x"))
    calls: list[int] = []

    def failing(failures: list[Exception], session) -> int:  # type: ignore[no-untyped-def]
        calls.append(1)
        session.execute(text("SELECT 1"))
        if failures:
            raise failures.pop(0)
        return 7

    try:
        # Lock contention and a stale profile version are retried, each in a new transaction.
        failures: list[Exception] = [locked, StaleDataError("v"), locked]
        assert db.run_write(partial(failing, failures)) == 7
        assert len(calls) == 4
        calls.clear()
        with pytest.raises(OperationalError, match="database is locked"):
            db.run_write(partial(failing, [locked] * 10), attempts=3)
        assert len(calls) == 3  # then the error goes up (the API answers 503, Retry-After)
        calls.clear()
        with pytest.raises(OperationalError, match="no such table"):
            db.run_write(partial(failing, [missing]))
        assert len(calls) == 1  # not transient: not retried
    finally:
        db.dispose()
