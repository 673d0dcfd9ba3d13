"""index_versions.build_spec: the build parameters an index file was made with

A reindex of an unchanged catalogue keeps the current index only when it was built with the
current parameters (indexer.vector_index.BUILD_SPEC); rows from before this column have none,
so the next reindex rebuilds them once.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("index_versions") as batch:
        batch.add_column(sa.Column("build_spec", sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("index_versions") as batch:
        batch.drop_column("build_spec")
