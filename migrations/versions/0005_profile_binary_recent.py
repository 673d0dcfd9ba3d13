"""profiles.recent as packed float64 bytes instead of JSON; accumulators stored uncompressed

Every event rewrites its user's profile, and encoding the recent buffer as JSON text (and
decoding it on every read) cost more than the rest of the row's Python work. The buffer becomes
little-endian float64 triples (epoch seconds, item id, weight): float32 would round epoch
seconds to minutes. Item ids stay exact (below 2**53). Existing rows are converted both ways.

On PostgreSQL, ``accumulators`` (float64 noise, ~18 KB) gets STORAGE EXTERNAL: still TOASTed,
but without the pglz attempt that never shrinks it and that every profile update paid.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

from __future__ import annotations

import numpy as np
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

BATCH = 1_000


def _convert(source: sa.ColumnClause, target: sa.ColumnClause, encode) -> None:
    """Copy profiles.<source> into profiles.<target> through ``encode``, a batch at a time."""
    bind = op.get_bind()
    profiles = sa.table("profiles", sa.column("user_id", sa.Integer()), source, target)
    last = -1
    while True:
        rows = bind.execute(
            sa.select(profiles.c.user_id, source)
            .where(profiles.c.user_id > last)
            .order_by(profiles.c.user_id)
            .limit(BATCH)
        ).all()
        if not rows:
            return
        bind.execute(
            sa.update(profiles)
            .where(profiles.c.user_id == sa.bindparam("uid"))
            .values({target.name: sa.bindparam("packed")}),
            [{"uid": user_id, "packed": encode(value)} for user_id, value in rows],
        )
        last = rows[-1][0]


def _pack(recent) -> bytes:
    return np.asarray(recent or [], dtype="<f8").reshape(-1, 3).tobytes()


def _unpack(packed) -> list[list[float]]:
    triples = np.frombuffer(packed or b"", dtype="<f8").reshape(-1, 3)
    return [[float(t), int(i), float(w)] for t, i, w in triples.tolist()]


def upgrade() -> None:
    op.add_column("profiles", sa.Column("recent_packed", sa.LargeBinary(), nullable=True))
    _convert(sa.column("recent", sa.JSON()), sa.column("recent_packed", sa.LargeBinary()), _pack)
    with op.batch_alter_table("profiles") as batch_op:
        batch_op.drop_column("recent")
        batch_op.alter_column(
            "recent_packed",
            new_column_name="recent",
            existing_type=sa.LargeBinary(),
            nullable=False,
        )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE profiles ALTER COLUMN accumulators SET STORAGE EXTERNAL")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE profiles ALTER COLUMN accumulators SET STORAGE EXTENDED")
    op.add_column("profiles", sa.Column("recent_json", sa.JSON(), nullable=True))
    _convert(sa.column("recent", sa.LargeBinary()), sa.column("recent_json", sa.JSON()), _unpack)
    with op.batch_alter_table("profiles") as batch_op:
        batch_op.drop_column("recent")
        batch_op.alter_column(
            "recent_json", new_column_name="recent", existing_type=sa.JSON(), nullable=False
        )
