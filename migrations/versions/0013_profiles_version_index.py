"""profiles: an index of their versions, on SQLite

A batch of events on SQLite folds into its users' profiles before taking the write lock, and
inside it only checks that no other writer changed those profiles since (their versions), then
writes them (`interest.ingest`): the lock, which every SQLite writer waits for, is held for the
insert and the writes only. Read from the table, a version sits past the row's 18 KB of
accumulators, so the check walked every row's overflow pages; this index holds (user_id,
version) alone. PostgreSQL has none: its writers lock rows and run side by side. Building it
reads the profiles once.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01
"""

from alembic import op

from store.models import PROFILE_VERSIONS_INDEX

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.create_index(PROFILE_VERSIONS_INDEX, "profiles", ["user_id", "version"])


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.drop_index(PROFILE_VERSIONS_INDEX, table_name="profiles")
