"""Index and model versions: exactly one active at a time."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from store.db import Database
from store.errors import NotFound
from store.models import IndexVersion, ModelVersion
from store.versions import (
    activate_index_version,
    activate_model_version,
    active_index_version,
    active_model_version,
    add_index_version,
    add_model_version,
    get_model_version,
    list_index_versions,
)


def _index(name: str) -> IndexVersion:
    return IndexVersion(
        path=f"indexes/{name}.faiss",
        checksum="0" * 64,
        item_count=3,
        kind="flat",
        embedder_model="m",
        fingerprint="f" * 64,
    )


def _model(name: str) -> ModelVersion:
    return ModelVersion(path=f"models/{name}.pt", checksum="0" * 64, embedder_model="m")


def _active_ids(db: Database, model: type[IndexVersion] | type[ModelVersion]) -> list[int]:
    with db.read() as session:
        return list(session.scalars(select(model.id).where(model.active.is_(True))))


def test_index_activation_keeps_exactly_one_active(db: Database) -> None:
    with db.write() as session:
        first = add_index_version(session, _index("a"), activate=True).id
        second = add_index_version(session, _index("b"), activate=True).id
        third = add_index_version(session, _index("c"), activate=False).id
    assert _active_ids(db, IndexVersion) == [second]

    with db.write() as session:
        activate_index_version(session, first)
        # the session's own objects agree with the database after the bulk UPDATE
        assert [v.active for v in list_index_versions(session)] == [True, False, False]
    assert _active_ids(db, IndexVersion) == [first]
    with db.read() as session:
        assert active_index_version(session).id == first
        assert [v.id for v in list_index_versions(session)] == [first, second, third]


def test_activating_unknown_index_version_changes_nothing(db: Database) -> None:
    with db.write() as session:
        kept = add_index_version(session, _index("a"), activate=True).id
    with pytest.raises(NotFound), db.write() as session:
        activate_index_version(session, kept + 100)
    assert _active_ids(db, IndexVersion) == [kept]


def test_model_activation_and_deactivation(db: Database) -> None:
    with db.read() as session:
        assert active_model_version(session) is None
    with db.write() as session:
        first = add_model_version(session, _model("a"), activate=True).id
        second = add_model_version(session, _model("b"), activate=True).id
    assert _active_ids(db, ModelVersion) == [second]
    with db.write() as session:
        activate_model_version(session, first)
    assert _active_ids(db, ModelVersion) == [first]
    with db.write() as session:
        activate_model_version(session, None)  # back to the plain decayed blend
    assert _active_ids(db, ModelVersion) == []
    with db.read() as session:
        assert get_model_version(session, second).path == "models/b.pt"
        with pytest.raises(NotFound):
            get_model_version(session, second + 100)
