"""recommendation sessions (pagination, attribution) and events.recomm_id

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "recommendation_sessions",
        sa.Column("recomm_id", sa.String(length=64), nullable=False),
        sa.Column("user_external_id", sa.String(length=256), nullable=True),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("shown", sa.JSON(), nullable=False),
        sa.Column("shown_count", sa.Integer(), nullable=False),
        sa.Column("strategy", sa.String(length=32), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=True),
        sa.Column("arm", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("recomm_id", name=op.f("pk_recommendation_sessions")),
    )
    op.create_index(
        op.f("ix_recommendation_sessions_expires_at"),
        "recommendation_sessions",
        ["expires_at"],
        unique=False,
    )
    op.add_column("events", sa.Column("recomm_id", sa.String(length=64), nullable=True))
    op.create_index(op.f("ix_events_recomm_id"), "events", ["recomm_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("events") as batch_op:
        batch_op.drop_index(batch_op.f("ix_events_recomm_id"))
        batch_op.drop_column("recomm_id")
    op.drop_index(
        op.f("ix_recommendation_sessions_expires_at"), table_name="recommendation_sessions"
    )
    op.drop_table("recommendation_sessions")
