"""stale_profiles: users whose profiles a bulk import left for the rebuild

`driftrec import events` commits events a batch at a time and rebuilds the profiles at the end;
a kill in between left those profiles behind their events for good, since the rerun skips the
stored events and rebuilt no one. Each batch now marks its users, under the import's own id, in
the same transaction; the import clears its marks as it folds its events into the profiles.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stale_profiles",
        sa.Column("user_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("import_id", sa.String(length=32), nullable=False),
        sa.Column("since_batch", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_stale_profiles_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_id", "import_id", name=op.f("pk_stale_profiles")),
    )
    # A killed import before this revision left users with events and no profile behind
    # (unmarked): mark them, so that the next `driftrec import events` (or `rebuild-profiles`)
    # rebuilds them.
    op.execute(
        "INSERT INTO stale_profiles (user_id, import_id, since_batch) "
        "SELECT DISTINCT events.user_id, 'migration-0008', 0 FROM events "
        "LEFT JOIN profiles ON profiles.user_id = events.user_id "
        "WHERE profiles.user_id IS NULL"
    )


def downgrade() -> None:
    op.drop_table("stale_profiles")
