"""Pooled PostgreSQL connections (`store.liveness`): one whose backend the server ended is
replaced before use, and one in steady use goes out without a ping."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

import store.liveness
from store.db import Database


def _backend_pid(db: Database) -> int:
    with db.read() as session:
        return int(session.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _terminate(url: str, pid: int) -> None:
    """End backend ``pid`` from another connection, as a server restart or an administrator
    would, and wait until it is gone."""
    admin = create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            terminated = connection.execute(
                text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}
            ).scalar_one()
            assert terminated is True
            deadline = time.monotonic() + 5
            while connection.execute(
                text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
            ).scalar_one():
                assert time.monotonic() < deadline
                time.sleep(0.01)
    finally:
        admin.dispose()


@pytest.fixture
def db(postgres_url):
    database = Database(postgres_url)
    yield database
    database.dispose()


def test_a_connection_whose_backend_was_terminated_is_replaced_before_use(db, postgres_url):
    first = _backend_pid(db)
    assert _backend_pid(db) == first  # the pool hands the same connection out again
    _terminate(postgres_url, first)
    # Within the idle window (no ping): the closed socket alone tells.
    second = _backend_pid(db)
    assert second != first
    with db.write() as session:  # writes go on too
        session.execute(text("CREATE TEMP TABLE probe (x int)"))
    _terminate(postgres_url, second)
    with db.write() as session:
        session.execute(text("CREATE TEMP TABLE probe (x int)"))


def test_only_a_connection_idle_past_the_window_is_pinged(db, monkeypatch):
    pings = []
    ping = db.engine.dialect.do_ping
    monkeypatch.setattr(db.engine.dialect, "do_ping", lambda c: pings.append(1) or ping(c))
    for _ in range(5):
        _backend_pid(db)
    assert pings == []
    monkeypatch.setattr(store.liveness, "IDLE_PING_AFTER_S", 0.05)
    time.sleep(0.1)
    _backend_pid(db)
    assert pings == [1]
