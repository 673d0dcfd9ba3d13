"""`service.session_writer`: recommendation sessions committed off the request path, in
batches, on a real SQLite database."""

from __future__ import annotations

import logging
import threading

from sqlalchemy import func, select

from service.session_writer import SessionWriter, _insert
from store.models import RecommendationSession
from store.recommendations import new_recomm_id, session_row


def _row(recomm_id: str | None = None) -> dict:
    return session_row(
        recomm_id=recomm_id or new_recomm_id(),
        user_external_id="u1",
        params={"k": 3},
        shown=[1, 2, 3],
        strategy="personalized",
        model_version_id=None,
        arm=None,
        ttl_s=60,
    )


def _stored(db) -> int:
    with db.read() as session:
        return session.scalar(select(func.count()).select_from(RecommendationSession))


def test_rows_queued_during_a_commit_go_into_the_next_one(sqlite_url):
    from store.db import Database

    db = Database(sqlite_url)
    release = threading.Event()
    batches: list[int] = []

    def held_insert(database, rows):
        batches.append(len(rows))
        release.wait(10)
        _insert(database, rows)

    writer = SessionWriter(db, write=held_insert)
    try:
        writer.add(_row())  # the thread takes it and holds the commit
        for _ in range(99):
            writer.add(_row())
        assert _stored(db) == 0  # add never waits for the database
        release.set()
        assert writer.flush()
        assert _stored(db) == 100
        assert len(batches) <= 3 and sum(batches) == 100  # 1, then the 99 (maybe split once)
    finally:
        writer.close()
        db.dispose()


def test_a_failed_batch_is_logged_and_the_writer_goes_on(sqlite_url, caplog):
    from store.db import Database

    db = Database(sqlite_url)
    duplicate = _row()
    writer = SessionWriter(db)
    try:
        writer.add(duplicate)
        assert writer.flush()
        with caplog.at_level(logging.ERROR, logger="service.session_writer"):
            writer.add(dict(duplicate))  # same primary key: the INSERT fails
            assert writer.flush()
        assert "1 recommendation sessions lost" in caplog.text
        writer.add(_row())
        assert writer.flush() and _stored(db) == 2
    finally:
        writer.close()
        db.dispose()


def test_close_writes_what_is_queued_and_later_rows_synchronously(sqlite_url):
    from store.db import Database

    db = Database(sqlite_url)
    writer = SessionWriter(db)
    try:
        for _ in range(20):
            writer.add(_row())
        writer.close()
        assert _stored(db) == 20
        writer.add(_row())  # after close (interpreter exit): written before add returns
        assert _stored(db) == 21
    finally:
        db.dispose()
