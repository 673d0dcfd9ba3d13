"""`driftrec purge-sessions` deletes recommendation sessions that expired long enough ago."""

from __future__ import annotations

from datetime import timedelta

from cli_helpers import fields, invoke, ok
from sqlalchemy import func, select

from store.db import Database
from store.models import RecommendationSession
from store.recommendations import insert_sessions, session_row
from store.types import utcnow


def test_purge_keeps_live_and_recently_expired_sessions(cli_env):
    ok(invoke(cli_env, "db", "upgrade"))
    db = Database(cli_env["DRIFTREC_DATABASE_URL"])
    try:
        with db.write() as session:
            new_rows = [
                session_row(
                    recomm_id=f"r{n}",
                    user_external_id="u1",
                    params={"k": 2, "examples": [{"vector": [0.5] * 384}]},
                    shown=[7, 8],
                    strategy="cold_start",
                    model_version_id=None,
                    arm=None,
                    ttl_s=3600,
                )
                for n in range(3)
            ]
            insert_sessions(session, new_rows)
            rows = session.scalars(
                select(RecommendationSession).order_by(RecommendationSession.recomm_id)
            ).all()
            rows[0].expires_at = utcnow() - timedelta(days=40)  # long expired
            rows[1].expires_at = utcnow() - timedelta(days=1)  # recently expired
        result = fields(ok(invoke(cli_env, "purge-sessions")).stdout, "purge-sessions")
        assert result["deleted"] == "1"
        # The recently expired one stays for stats, without its request and items shown.
        assert result["requests_cleared"] == "1"
        with db.read() as session:
            assert session.scalar(select(func.count()).select_from(RecommendationSession)) == 2
            kept = {row.recomm_id: row for row in session.scalars(select(RecommendationSession))}
        assert (kept["r1"].params, kept["r1"].shown, kept["r1"].shown_count) == ({}, [], 2)
        assert kept["r2"].params == {"k": 2, "examples": [{"vector": [0.5] * 384}]}
        assert kept["r2"].shown == [7, 8]
        again = fields(ok(invoke(cli_env, "purge-sessions")).stdout, "purge-sessions")
        assert again["requests_cleared"] == "0"  # already empty: not rewritten
        result = fields(
            ok(invoke(cli_env, "purge-sessions", "--older-than-days", "0")).stdout,
            "purge-sessions",
        )
        assert result["deleted"] == "1"
    finally:
        db.dispose()
