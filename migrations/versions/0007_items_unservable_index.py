"""items: a partial index on the items a server must not answer with

Every server process reads them (deleted, unavailable, or with an expiry time) when it loads an
index version; without an index that read scanned the whole table with its vectors.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# Built like store.models.unservable_condition, so that each dialect renders the same condition
# as the query it serves (SQLite uses a partial index only for a query naming its condition).
_items = sa.table(
    "items",
    sa.column("deleted_at", sa.DateTime),
    sa.column("available", sa.Boolean),
    sa.column("expires_at", sa.DateTime),
)
UNSERVABLE = sa.or_(
    _items.c.deleted_at.is_not(None),
    _items.c.available.is_(False),
    _items.c.expires_at.is_not(None),
)


def upgrade() -> None:
    op.create_index(
        "ix_items_unservable",
        "items",
        ["id"],
        sqlite_where=UNSERVABLE,
        postgresql_where=UNSERVABLE,
    )


def downgrade() -> None:
    op.drop_index("ix_items_unservable", table_name="items")
