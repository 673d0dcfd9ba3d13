"""items: a covering index for naming an answer's items, on SQLite

Every answer names its items (external id and title) by internal id. On SQLite that read the
item rows, ~1.5 KB each with their vectors: at 1M items the database is 2.2 GB, and the OS page
cache of these VMs let most of it go within minutes, so ten names cost 1.2 ms of reads from
disk (0.1 ms when cached). The index holds only the three columns (~60 MB at 1M items) and stays
cached: 0.06 ms. PostgreSQL has none (its index entries are limited to ~2.7 KB and titles are
not). Building it reads the items table once (2.6 s at 1M items).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01
"""

from alembic import op

from store.models import ITEM_NAMES_INDEX

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.create_index(ITEM_NAMES_INDEX, "items", ["id", "external_id", "title"])


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.drop_index(ITEM_NAMES_INDEX, table_name="items")
