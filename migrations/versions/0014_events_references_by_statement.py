"""events: their references to users and items checked once per statement, on PostgreSQL

A foreign key is checked by a trigger query per inserted row. For the events of a bulk import
(25,000 rows a statement) those checks were most of the insert: 200,000 events inserted by one
`INSERT ... SELECT` took 5.8-6.0 s with the two foreign keys and 2.9-3.0 s without them (a Zen 2
VM). Here the two foreign keys of `events` give way to a statement-level trigger that does what
they did: it locks each user and item the statement's rows name once (FOR KEY SHARE, as the
foreign keys' checks do, so a concurrent delete waits for this transaction or makes it fail),
and raises PostgreSQL's foreign-key error, under the foreign key's name, when one is missing:
2.5-2.6 s. A one-row insert pays for the trigger's call: 62-100 us against 40-65 with the
foreign keys, in the same interleaved psql loops. Deleting a user or an item deletes its
events, as ON DELETE CASCADE did, once per statement too; a `TRUNCATE users CASCADE` no longer
reaches `events`. SQLite keeps its foreign keys: its checks are an index probe per row.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-01
"""

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

# (the events' column, the table it names, the foreign key it stood for)
_REFERENCES = (
    ("user_id", "users", "fk_events_user_id_users"),
    ("item_id", "items", "fk_events_item_id_items"),
)


def _check(column: str, table: str, constraint: str) -> str:
    """PL/pgSQL: lock the rows of ``table`` the statement's events name; raise PostgreSQL's
    foreign-key error, under ``constraint``, when one is missing."""
    return f"""
    -- One index probe and key-share lock per distinct id: a LATERAL subquery with a locking
    -- clause is never flattened, so this plan holds for one row as for 25,000.
    SELECT count(*) - count(locked.id) INTO missing
    FROM (SELECT DISTINCT {column} FROM new_events) AS wanted
    LEFT JOIN LATERAL (
        SELECT {table}.id FROM {table} WHERE {table}.id = wanted.{column} FOR KEY SHARE
    ) AS locked ON true;
    IF missing > 0 THEN
        SELECT {column} INTO missing_id FROM new_events
        WHERE NOT EXISTS (SELECT FROM {table} WHERE {table}.id = new_events.{column}) LIMIT 1;
        RAISE foreign_key_violation USING
            MESSAGE = 'insert or update on table "events" violates foreign key constraint '
                '"{constraint}"',
            DETAIL = format('Key ({column})=(%s) is not present in table "{table}".', missing_id),
            CONSTRAINT = '{constraint}', TABLE = 'events', SCHEMA = TG_TABLE_SCHEMA;
    END IF;"""


_CHECK_FUNCTION = f"""
CREATE FUNCTION events_check_references() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    missing bigint;
    missing_id bigint;
BEGIN{"".join(_check(*reference) for reference in _REFERENCES)}
    RETURN NULL;
END
$$
"""

_CASCADE_FUNCTION = """
CREATE FUNCTION events_cascade_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'users' THEN
        DELETE FROM events WHERE user_id IN (SELECT id FROM gone);
    ELSE
        DELETE FROM events WHERE item_id IN (SELECT id FROM gone);
    END IF;
    RETURN NULL;
END
$$
"""

# (name, table, when, transition table, function)
_TRIGGERS = (
    (
        "events_references_on_insert",
        "events",
        "AFTER INSERT",
        "NEW TABLE AS new_events",
        "events_check_references",
    ),
    (
        "events_references_on_update",
        "events",
        "AFTER UPDATE",
        "NEW TABLE AS new_events",
        "events_check_references",
    ),
    ("users_delete_events", "users", "AFTER DELETE", "OLD TABLE AS gone", "events_cascade_delete"),
    ("items_delete_events", "items", "AFTER DELETE", "OLD TABLE AS gone", "events_cascade_delete"),
)


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for *_, constraint in _REFERENCES:
        op.drop_constraint(constraint, "events", type_="foreignkey")
    op.execute(_CHECK_FUNCTION)
    op.execute(_CASCADE_FUNCTION)
    for name, table, when, transition, function in _TRIGGERS:
        op.execute(
            f"CREATE TRIGGER {name} {when} ON {table} REFERENCING {transition} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {function}()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, table, *_ in _TRIGGERS:
        op.execute(f"DROP TRIGGER {name} ON {table}")
    op.execute("DROP FUNCTION events_cascade_delete()")
    op.execute("DROP FUNCTION events_check_references()")
    for column, table, constraint in _REFERENCES:
        op.create_foreign_key(constraint, "events", table, [column], ["id"], ondelete="CASCADE")
