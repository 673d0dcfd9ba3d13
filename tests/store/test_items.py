"""Items data access on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pytest

from store.db import Database
from store.errors import NotFound
from store.items import (
    EMBEDDING_TEXT_MAX_CHARS,
    ItemInput,
    _names_statement,
    catalogue_revision,
    content_hash,
    count_live_items,
    current_catalogue_revision,
    delete_item,
    embedding_text,
    get_item,
    ids_by_external,
    item_names,
    item_vector,
    store_vectors,
    upsert_items,
)
from store.models import ITEM_NAMES_INDEX


def test_upsert_inserts_then_updates(db: Database) -> None:
    with db.write() as session:
        [created] = upsert_items(session, [ItemInput("a", "Alpha", "first", ["x"], {"k": 1})])
        created_id = created.id
    with db.write() as session:
        upsert_items(session, [ItemInput("a", "Alpha 2", None, ["y"], available=False)])
    with db.read() as session:
        item = get_item(session, "a")
        assert (item.id, item.title, item.text) == (created_id, "Alpha 2", None)
        assert (item.categories, item.properties, item.available) == (["y"], {}, False)
        assert count_live_items(session) == 1


def test_last_input_wins_within_a_batch(db: Database) -> None:
    with db.write() as session:
        items = upsert_items(session, [ItemInput("a", "one"), ItemInput("a", "two")])
    assert len(items) == 1
    with db.read() as session:
        assert get_item(session, "a").title == "two"


def test_content_hash_changes_only_when_embedded_text_changes(db: Database) -> None:
    with db.write() as session:
        upsert_items(session, [ItemInput("a", "Alpha", "text", ["x"])])
    with db.read() as session:
        first = get_item(session, "a").content_hash
    assert first == content_hash("Alpha", "text")

    with db.write() as session:  # categories, properties and availability are not embedded
        upsert_items(session, [ItemInput("a", "Alpha", "text", ["y"], {"p": 2}, False)])
    with db.read() as session:
        assert get_item(session, "a").content_hash == first

    with db.write() as session:
        upsert_items(session, [ItemInput("a", "Alpha", "new text")])
    with db.read() as session:
        changed = get_item(session, "a").content_hash
    assert changed != first
    assert changed == content_hash("Alpha", "new text")


def test_only_the_start_of_a_long_text_is_embedded(db: Database) -> None:
    """The embedder reads a few hundred tokens: the rest of a text is not tokenized at all, and
    changing it changes nothing that is embedded."""
    long = "word " * 1_000_000  # 5 MB
    assert len(embedding_text("Long", long)) == EMBEDDING_TEXT_MAX_CHARS
    assert content_hash("Long", long) == content_hash("Long", long + "more at the end")
    assert content_hash("Long", long) != content_hash("Long", "other " + long)
    with db.write() as session:
        upsert_items(session, [ItemInput("long", "Long", long)])
    with db.read() as session:
        assert get_item(session, "long").text == long  # stored whole


def test_delete_hides_item_and_upsert_revives_it(db: Database) -> None:
    with db.write() as session:
        [item] = upsert_items(session, [ItemInput("a", "Alpha")])
        item_id = item.id
        delete_item(session, "a")
    with db.read() as session:
        with pytest.raises(NotFound):
            get_item(session, "a")
        assert get_item(session, "a", include_deleted=True).deleted_at is not None
        assert ids_by_external(session, ["a"]) == {}
        assert count_live_items(session) == 0

    with db.write() as session:
        upsert_items(session, [ItemInput("a", "Alpha again")])
    with db.read() as session:
        revived = get_item(session, "a")
        assert (revived.id, revived.deleted_at, revived.title) == (item_id, None, "Alpha again")
        assert ids_by_external(session, ["a", "missing"]) == {"a": item_id}


def test_delete_unknown_item_raises_not_found(db: Database) -> None:
    with db.write() as session, pytest.raises(NotFound):
        delete_item(session, "nope")


def test_expires_at_round_trips_as_aware_utc(db: Database) -> None:
    plus_two = timezone(timedelta(hours=2))
    expires = datetime(2030, 5, 6, 9, 30, 15, 123456, tzinfo=plus_two)
    with db.write() as session:
        upsert_items(session, [ItemInput("a", "Alpha", expires_at=expires)])
    with db.read() as session:
        stored = get_item(session, "a").expires_at
    assert stored == expires
    assert stored.utcoffset() == timedelta(0)
    assert stored.hour == 7 and stored.tzinfo is not None


def test_naive_datetime_is_refused(db: Database) -> None:
    with pytest.raises(Exception, match="naive datetime"), db.write() as session:
        upsert_items(session, [ItemInput("a", "Alpha", expires_at=datetime(2030, 1, 1))])
    with db.read() as session:
        assert count_live_items(session) == 0


def test_created_at_is_aware_utc(db: Database) -> None:
    before = datetime.now(UTC)
    with db.write() as session:
        upsert_items(session, [ItemInput("a", "Alpha")])
    with db.read() as session:
        created = get_item(session, "a").created_at
    assert created.tzinfo is not None and created.utcoffset() == timedelta(0)
    assert before - timedelta(seconds=5) <= created <= datetime.now(UTC) + timedelta(seconds=5)


def test_unservable_items_are_read_through_their_partial_index(sqlite_url: str) -> None:
    """A server reads them at every index load: the query must not scan the table (vectors and
    all); SQLite uses a partial index only when the query states the index's own condition."""
    from sqlalchemy import text

    from store.items import UNSERVABLE_ROWS

    database = Database(sqlite_url)
    try:
        sql = str(UNSERVABLE_ROWS.compile(database.engine, compile_kwargs={"literal_binds": True}))
        with database.read() as session:
            plan = " ".join(row[-1] for row in session.execute(text(f"EXPLAIN QUERY PLAN {sql}")))
        assert "USING INDEX ix_items_unservable" in plan, plan
    finally:
        database.dispose()


def test_item_vector_reads_a_live_items_vector_with_the_catalogue_revision(db: Database) -> None:
    """The similar-items read (past the Session): no vector before the first reindex, the
    stored bytes after, the revision of the same moment; unknown and deleted items raise."""
    with db.write() as session:
        (item,) = upsert_items(session, [ItemInput("a", "Alpha")])
        item_id, text_hash = item.id, item.content_hash
    before = item_vector(db, "a")
    assert (before.item_id, before.vector) == (item_id, None)
    vector = np.arange(4, dtype=np.float32).tobytes()
    with db.write() as session:
        store_vectors(session, "model", 4, [(item_id, text_hash, vector)])
        revision = catalogue_revision(session)
    after = item_vector(db, "a")
    assert (after.item_id, after.vector, after.catalogue_revision) == (item_id, vector, revision)
    assert revision > before.catalogue_revision
    with db.write() as session:
        delete_item(session, "a")
    for missing in ("a", "nobody"):
        with pytest.raises(NotFound):
            item_vector(db, missing)


def test_item_names_names_one_or_many_ids_deleted_items_too(db: Database) -> None:
    """Deleted items are named too (an answer names what the index served); unknown ids are
    absent; one id and 51 go through the same statement (its text does not depend on the
    count; what is checked here is that both answer right)."""
    with db.write() as session:
        rows = upsert_items(session, [ItemInput(f"i{n}", f"Title {n}") for n in range(50)])
        ids = [row.id for row in rows]
        delete_item(session, "i0")
    assert item_names(db, []) == {}
    assert item_names(db, [ids[0]]) == {ids[0]: ("i0", "Title 0")}
    assert item_names(db, [*ids, 10**9]) == {i: (f"i{n}", f"Title {n}") for n, i in enumerate(ids)}


def test_item_names_follow_renames_and_read_only_the_covering_index_on_sqlite(
    db: Database,
) -> None:
    """A renamed item is named anew (the index is kept current with its rows); on SQLite the
    statement reads the covering index alone, never the item rows with their vectors."""
    with db.write() as session:
        [row] = upsert_items(session, [ItemInput("a", "Before")])
    with db.write() as session:
        upsert_items(session, [ItemInput("a", "After")])
    assert item_names(db, [row.id]) == {row.id: ("a", "After")}
    if db.dialect == "sqlite":
        sql = str(_names_statement("sqlite").compile(dialect=db.engine.dialect))
        with db.engine.connect() as connection:
            plan = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", ("[1]",)).all()
        details = " | ".join(str(step[-1]) for step in plan)
        assert f"SEARCH items USING COVERING INDEX {ITEM_NAMES_INDEX}" in details, details


def test_current_catalogue_revision_follows_catalogue_changes(db: Database) -> None:
    with db.read() as session:
        assert current_catalogue_revision(db) == catalogue_revision(session)
    with db.write() as session:
        upsert_items(session, [ItemInput("a", "Alpha")])
    with db.read() as session:
        after = catalogue_revision(session)
    assert current_catalogue_revision(db) == after > 0
