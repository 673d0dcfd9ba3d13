"""Data access for items. Functions take a `Session` and never commit (`item_vector`,
`item_names` and `current_catalogue_revision`, request-path reads, take the `Database` and
run past the Session)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Row,
    Select,
    and_,
    bindparam,
    case,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session

from store.db import Database
from store.dialect import (
    bound_list,
    covering_select,
    in_bound_list,
    insert_ignoring_conflicts,
)
from store.direct_read import DirectRead
from store.errors import NotFound
from store.models import ITEM_NAMES_INDEX, Counter, Item, unservable_condition
from store.types import utcnow


@dataclass(frozen=True)
class ItemInput:
    external_id: str
    title: str
    text: str | None = None
    categories: list[str] = field(default_factory=list)
    properties: dict[str, Any] = field(default_factory=dict)
    available: bool = True
    expires_at: datetime | None = None


#: The embedder sees at most this many characters of an item. Sentence-transformers models
#: read a few hundred tokens (256 for the bundled MiniLM, ~1,300 characters of English); a
#: tokenizer drops the rest only after tokenizing all of it, which the embedders avoid only
#: where a prefix fills the window (`indexer.embedder._long_text_windows`): an 8 MB text
#: held a worker for 9 s. A token spans at most 100 characters (WordPiece's longest word), so
#: only text of long runs of spaces or symbols embeds differently when cut here.
EMBEDDING_TEXT_MAX_CHARS = 32_000


def embedding_text(title: str, text: str | None) -> str:
    """The text the embedder sees for an item (and its content hash is made from)."""
    return (f"{title}. {text}" if text else title)[:EMBEDDING_TEXT_MAX_CHARS]


def content_hash(title: str, text: str | None) -> str:
    return hashlib.sha256(embedding_text(title, text).encode("utf-8")).hexdigest()


CATALOGUE_COUNTER = "catalogue"


def next_revision(session: Session) -> int:
    """Bump and return the catalogue revision.

    The counter row stays locked until the transaction ends, so catalogue writes commit in
    revision order and a server that has applied revision r has seen every change <= r.
    """
    insert_ignoring_conflicts(
        session, Counter.__table__, [{"name": CATALOGUE_COUNTER, "value": 0}], "name"
    )
    return session.execute(
        update(Counter)
        .where(Counter.name == CATALOGUE_COUNTER)
        .values(value=Counter.value + 1)
        .returning(Counter.value)
    ).scalar_one()


#: Run on every request that searches: built once (a statement is immutable; reusing it skips
#: building and cache-keying it) and run on the session's connection, past the ORM layer.
_REVISION = select(Counter.__table__.c.value).where(Counter.__table__.c.name == CATALOGUE_COUNTER)
#: The same revision as a column other request-path statements carry (one round trip less).
REVISION_COLUMN = _REVISION.scalar_subquery().label("catalogue_revision")


def catalogue_revision(session: Session) -> int:
    value = session.connection().scalar(_REVISION)
    return int(value or 0)


_CATALOGUE_REVISION = DirectRead(select(REVISION_COLUMN))


def current_catalogue_revision(db: Database) -> int:
    """`catalogue_revision` in a statement of its own, past the Session (`store.direct_read`):
    the index's per-request catalogue check, for requests that read nothing else first."""
    row = _CATALOGUE_REVISION.first(db, {})
    return int(row.catalogue_revision or 0) if row is not None else 0


def upsert_items(session: Session, inputs: Sequence[ItemInput]) -> list[Item]:
    """Insert new items and update existing ones (an upsert revives a deleted item)."""
    revision = next_revision(session)
    by_id = {item.external_id: item for item in inputs}  # last one wins within a batch
    existing = {
        item.external_id: item
        for item in session.scalars(select(Item).where(Item.external_id.in_(list(by_id))))
    }
    result = []
    for external_id, data in by_id.items():
        item = existing.get(external_id)
        if item is None:
            item = Item(external_id=external_id)
            session.add(item)
        elif _unchanged(item, data):
            # Not a change: a new revision would make every server overlay the item until a
            # reindex that finds nothing to rebuild (rerunning an import would mask everything).
            result.append(item)
            continue
        item.title = data.title
        item.text = data.text
        item.categories = list(data.categories)
        item.properties = dict(data.properties)
        item.available = data.available
        item.expires_at = data.expires_at
        item.content_hash = content_hash(data.title, data.text)
        item.deleted_at = None
        item.revision = revision
        result.append(item)
    session.flush()
    return result


def _unchanged(item: Item, data: ItemInput) -> bool:
    return (
        item.deleted_at is None
        and (item.title, item.text, item.available, item.expires_at)
        == (data.title, data.text, data.available, data.expires_at)
        and list(item.categories or []) == list(data.categories)
        and dict(item.properties or {}) == dict(data.properties)
    )


@dataclass(frozen=True)
class ItemVectorRow:
    """A live item's internal id and stored embedder vector (None before its first reindex),
    with the catalogue revision read in the same statement."""

    item_id: int
    vector: bytes | None
    catalogue_revision: int


_ITEM_VECTOR = DirectRead(
    select(Item.__table__.c.id, Item.__table__.c.vector, Item.__table__.c.deleted_at)
    .add_columns(REVISION_COLUMN)
    .where(Item.__table__.c.external_id == bindparam("external_id")),
    "external_id",
    binary=True,
)


def item_vector(db: Database, external_id: str) -> ItemVectorRow:
    """What similar-items requests read: one statement past the Session
    (`store.direct_read`); `NotFound` for an unknown or deleted item."""
    row = _ITEM_VECTOR.first(db, {"external_id": external_id})
    if row is None or row.deleted_at is not None:
        raise NotFound(f"item {external_id!r} not found")
    return ItemVectorRow(row.id, row.vector, int(row.catalogue_revision or 0))


def _names_statement(dialect: str) -> Select[Any]:
    return covering_select(
        Item.__table__, ITEM_NAMES_INDEX, "id", "external_id", "title", param="ids", dialect=dialect
    )


_NAMES = {
    dialect: DirectRead(_names_statement(dialect), "ids") for dialect in ("postgresql", "sqlite")
}


def item_names(db: Database, item_ids: Sequence[int]) -> dict[int, tuple[str, str]]:
    """External id and title by internal id (deleted items too: answers name what the index
    served), in one statement past the Session (`store.direct_read`): what an answer's items
    are named with when a process's name cache misses them."""
    ids = [int(i) for i in item_ids]
    if not ids:
        return {}
    rows = _NAMES[db.dialect].all(db, {"ids": bound_list(ids, db.dialect)})
    return {row.id: (row.external_id, row.title) for row in rows}


def get_item(session: Session, external_id: str, *, include_deleted: bool = False) -> Item:
    item = session.scalar(select(Item).where(Item.external_id == external_id))
    if item is None or (item.deleted_at is not None and not include_deleted):
        raise NotFound(f"item {external_id!r} not found")
    return item


def items_by_ids(session: Session, ids: Iterable[int]) -> dict[int, Item]:
    ids = list(set(ids))
    if not ids:
        return {}
    return {item.id: item for item in session.scalars(select(Item).where(Item.id.in_(ids)))}


def ids_by_external(session: Session, external_ids: Iterable[str]) -> dict[str, int]:
    """Map live (not deleted) items' external ids to internal ids; unknown ids are absent."""
    wanted = set(external_ids)
    if not wanted:
        return {}
    dialect = session.get_bind().dialect.name
    rows = _IDS_BY_EXTERNAL[dialect].all_in(session, {"ids": bound_list(wanted, dialect)})
    return {external_id: item_id for external_id, item_id in rows}


def has_current_vector(model: Any) -> ColumnElement[bool]:
    """An item has a vector made by ``model`` (a value or bind parameter) from its present text."""
    items = Item.__table__.c
    return and_(
        items.vector.is_not(None),
        items.vector_model == model,
        items.vector_hash == items.content_hash,
    )


def live_items_select(dialect: str, ids: str) -> Select[Any]:
    """External id, id and the vector where it is current (made by the bound ``model`` from
    the current text), else NULL (a stale vector must not count), of the live items among the
    bound list ``ids`` (`store.dialect.bound_list`)."""
    return _live_items().where(in_bound_list(Item.__table__.c.external_id, ids, dialect))


def live_item_select(external_id: str) -> Select[Any]:
    """`live_items_select` for the one item whose external id is bound as ``external_id``."""
    return _live_items().where(Item.__table__.c.external_id == bindparam(external_id))


def _live_items() -> Select[Any]:
    items = Item.__table__.c
    current = has_current_vector(bindparam("model"))
    return select(
        items.external_id, items.id, case((current, items.vector), else_=None).label("vector")
    ).where(items.deleted_at.is_(None))


# Lookups of many items, compiled once (`store.direct_read`), their ids bound as one list
# (`store.dialect.in_bound_list`): as thousands of separate parameters (SQLAlchemy's expanding
# IN) the statement's rendering and psycopg's parsing of it cost more than the lookup (2,000
# vectors on PostgreSQL: 66-130 ms against 43-55).
_IDS_BY_EXTERNAL = {
    dialect: DirectRead(
        select(Item.__table__.c.external_id, Item.__table__.c.id).where(
            Item.__table__.c.deleted_at.is_(None),
            in_bound_list(Item.__table__.c.external_id, "ids", dialect),
        ),
        "ids",
    )
    for dialect in ("postgresql", "sqlite")
}
# Through SQLAlchemy's Connection, unlike the reads above: a trained model's request reads
# these for its users' items newer than the model, and that query stays visible to engine
# instrumentation (tests/service/test_api_text_in.py counts it).
_CURRENT_VECTORS = {
    dialect: select(Item.__table__.c.id, Item.__table__.c.vector).where(
        in_bound_list(Item.__table__.c.id, "ids", dialect), has_current_vector(bindparam("model"))
    )
    for dialect in ("postgresql", "sqlite")
}


def current_vectors(session: Session, ids: Iterable[int], model: str) -> dict[int, bytes]:
    """Current float32 vector bytes of the given items (those without one are absent)."""
    wanted = set(ids)
    if not wanted:
        return {}
    dialect = session.get_bind().dialect.name
    params = {"ids": bound_list(wanted, dialect), "model": model}
    rows = session.connection().execute(_CURRENT_VECTORS[dialect], params)
    return {item_id: vector for item_id, vector in rows}


def delete_item(session: Session, external_id: str) -> Item:
    item = get_item(session, external_id)
    item.deleted_at = utcnow()
    item.revision = next_revision(session)
    session.flush()
    return item


def changed_since(session: Session, revision: int) -> list[Item]:
    """Items changed after catalogue ``revision``, oldest change first."""
    return list(
        session.scalars(select(Item).where(Item.revision > revision).order_by(Item.revision))
    )


def count_live_items(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Item).where(Item.deleted_at.is_(None)))


def stale_vector_ids(session: Session, model: str, *, limit: int | None = None) -> list[int]:
    """Live items whose stored vector is missing or was made from other text or another model."""
    stmt = (
        select(Item.id)
        .where(
            Item.deleted_at.is_(None),
            or_(
                Item.vector.is_(None),
                Item.vector_hash.is_(None),
                Item.vector_hash != Item.content_hash,
                Item.vector_model != model,
            ),
        )
        .order_by(Item.id)
    )
    if limit is not None:
        stmt = stmt.limit(limit)
    return list(session.scalars(stmt))


#: One executemany for a batch of vectors. A Core statement on the table: the ORM form,
#: run once per item, synchronised the session's identity map each time, which made storing
#: n vectors in the session that had just upserted their items O(n^2) (60 s for 3,000 items).
_STORE_VECTOR = (
    update(Item.__table__)
    .where(Item.__table__.c.id == bindparam("b_id"))
    .values(
        vector=bindparam("b_vector"),
        vector_dim=bindparam("b_dim"),
        vector_model=bindparam("b_model"),
        vector_hash=bindparam("b_hash"),
        revision=bindparam("b_revision"),
    )
)


def store_vectors(
    session: Session, model: str, dim: int, vectors: Iterable[tuple[int, str, bytes]]
) -> None:
    """Record (item id, content hash the vector was made from, float32 bytes) for each item.

    A new vector is a catalogue change like any other: it takes a new revision, so servers
    overlay the item and a reindex can trust "same revision" to mean "same vectors". Item
    objects already loaded in ``session`` keep their old vector attributes until refreshed.
    """
    rows = list(vectors)
    if not rows:
        return
    revision = next_revision(session)
    session.execute(
        _STORE_VECTOR,
        [
            {
                "b_id": i,
                "b_vector": v,
                "b_dim": dim,
                "b_model": model,
                "b_hash": h,
                "b_revision": revision,
            }
            for i, h, v in rows
        ],
    )


def live_vectors_after(
    session: Session, model: str, after_id: int, *, limit: int = 10_000
) -> list[tuple[int, bytes]]:
    """Up to ``limit`` (item id, vector bytes) of live items with a current vector and an id
    above ``after_id``, in id order: one page of a scan that can use a transaction per page."""
    items = Item.__table__.c
    rows = session.execute(
        select(items.id, items.vector)
        .where(items.id > after_id, items.deleted_at.is_(None), has_current_vector(model))
        .order_by(items.id)
        .limit(limit)
    ).all()
    return [(item_id, vector) for item_id, vector in rows]


#: The items that are deleted, unavailable or carry an expiry time (checked at query time):
#: the columns a server tracks, not their vectors. Stating `unservable_condition` lets the
#: databases read it through the partial index ``ix_items_unservable``.
UNSERVABLE_ROWS = select(
    Item.__table__.c.id,
    Item.__table__.c.deleted_at,
    Item.__table__.c.available,
    Item.__table__.c.expires_at,
).where(unservable_condition())


def unservable_rows(session: Session) -> list[Row[Any]]:
    """(id, deleted_at, available, expires_at) of every item `UNSERVABLE_ROWS` selects."""
    return list(session.execute(UNSERVABLE_ROWS))
