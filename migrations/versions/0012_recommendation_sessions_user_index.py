"""recommendation_sessions: an index on the user, for erasing a user's answers

`DELETE /v1/users/<id>` now deletes the user's recommendation answers too (their parameters and
the items shown); this partial index (answers to anonymous requests name no user) finds them
without reading every answer kept. Building it reads the table once.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_sessions = sa.table("recommendation_sessions", sa.column("user_external_id", sa.String))
NAMES_A_USER = _sessions.c.user_external_id.is_not(None)


def upgrade() -> None:
    op.create_index(
        "ix_recommendation_sessions_user",
        "recommendation_sessions",
        ["user_external_id"],
        sqlite_where=NAMES_A_USER,
        postgresql_where=NAMES_A_USER,
    )


def downgrade() -> None:
    op.drop_index("ix_recommendation_sessions_user", table_name="recommendation_sessions")
