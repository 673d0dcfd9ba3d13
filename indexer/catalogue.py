"""Catalogue changes through the API: upsert with embedding, delete.

New or changed texts are embedded before the write transaction; items and their vectors are
then committed together, bumping the catalogue revision that servers watch, so the items are
searchable in every worker once this returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select

from indexer.embedder import Embedder
from store.db import Database
from store.items import (
    ItemInput,
    content_hash,
    delete_item,
    embedding_text,
    store_vectors,
    upsert_items,
)
from store.models import Item


@dataclass(frozen=True)
class UpsertResult:
    upserted: int
    embedded: int


def upsert_catalogue(db: Database, embedder: Embedder, inputs: Sequence[ItemInput]) -> UpsertResult:
    latest = {item.external_id: item for item in inputs}
    hashes = {ext: content_hash(i.title, i.text) for ext, i in latest.items()}
    with db.read() as session:
        current = dict(
            session.execute(
                select(Item.external_id, Item.vector_hash).where(
                    Item.external_id.in_(list(latest)), Item.vector_model == embedder.model_name
                )
            ).all()
        )
    todo = [ext for ext in latest if current.get(ext) != hashes[ext]]
    vectors = embedder.embed([embedding_text(latest[e].title, latest[e].text) for e in todo])

    def work(session) -> int:  # type: ignore[no-untyped-def]
        items = {item.external_id: item for item in upsert_items(session, list(latest.values()))}
        store_vectors(
            session,
            embedder.model_name,
            embedder.dim,
            (
                (items[ext].id, hashes[ext], vector.tobytes())
                for ext, vector in zip(todo, vectors, strict=True)
            ),
        )
        return len(items)

    upserted = db.run_write(work)
    return UpsertResult(upserted=upserted, embedded=len(todo))


def delete_from_catalogue(db: Database, external_id: str) -> None:
    """Soft-delete: the item is never recommended again (servers mask it on their next query)."""
    db.run_write(lambda session: delete_item(session, external_id))
