"""Recommendation sessions kept for stats after they expire, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update

from store.models import RecommendationSession
from store.recommendations import clear_expired_requests, insert_sessions, session_row
from store.types import utcnow


def test_expired_sessions_lose_their_request_but_keep_what_stats_count(db):
    examples = {"k": 3, "examples": [{"vector": [0.25] * 384, "weight": 1.0}]}
    rows = [
        session_row(
            recomm_id=f"r{n}",
            user_external_id=None,
            params=examples,
            shown=[1, 2, 3],
            strategy="personalized",
            model_version_id=None,
            arm=None,
            ttl_s=3600,
        )
        for n in range(2)
    ]
    with db.write() as session:
        insert_sessions(session, rows)
    with db.write() as session:
        session.execute(
            update(RecommendationSession)
            .where(RecommendationSession.recomm_id == "r0")
            .values(expires_at=utcnow() - timedelta(hours=1))
        )
    with db.write() as session:
        assert clear_expired_requests(session) == 1
    with db.write() as session:
        assert clear_expired_requests(session) == 0  # emptied rows are not rewritten
    with db.read() as session:
        kept = {row.recomm_id: row for row in session.scalars(select(RecommendationSession))}
    assert (kept["r0"].params, kept["r0"].shown, kept["r0"].shown_count) == ({}, [], 3)
    assert (kept["r1"].params, kept["r1"].shown) == (examples, [1, 2, 3])
