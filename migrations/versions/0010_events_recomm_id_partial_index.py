"""events: the recomm_id index holds only the events that name a recommendation answer

Most events (bulk imports, clients that send no recomm_id) name none, and the index kept an
entry for each NULL all the same: every event insert paid for it (a raw insert of 200,000
events without recomm_ids into SQLite ran 4-9% faster with the partial index). Attribution's
reads compare the column, which implies it is not NULL, so both databases still use it.
Building the new index reads the whole events table and holds event writes meanwhile: run
`driftrec db upgrade` when the servers are stopped or idle.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_events = sa.table("events", sa.column("recomm_id", sa.String))
NAMES_AN_ANSWER = _events.c.recomm_id.is_not(None)


def upgrade() -> None:
    op.drop_index("ix_events_recomm_id", table_name="events")
    op.create_index(
        "ix_events_recomm_id",
        "events",
        ["recomm_id"],
        sqlite_where=NAMES_AN_ANSWER,
        postgresql_where=NAMES_AN_ANSWER,
    )


def downgrade() -> None:
    op.drop_index("ix_events_recomm_id", table_name="events")
    op.create_index("ix_events_recomm_id", "events", ["recomm_id"])
