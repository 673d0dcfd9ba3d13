"""Index and model versions: published atomically, one active at a time."""

from __future__ import annotations

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from store.errors import NotFound
from store.models import IndexVersion, ModelVersion


def add_index_version(session: Session, version: IndexVersion, *, activate: bool) -> IndexVersion:
    session.add(version)
    session.flush()
    if activate:
        activate_index_version(session, version.id)
    return version


def activate_index_version(session: Session, version_id: int) -> None:
    if session.get(IndexVersion, version_id) is None:
        raise NotFound(f"index version {version_id} not found")
    session.execute(update(IndexVersion).values(active=IndexVersion.id == version_id))


def active_index_version(session: Session) -> IndexVersion | None:
    return session.scalar(
        select(IndexVersion).where(IndexVersion.active.is_(True)).order_by(IndexVersion.id.desc())
    )


def latest_index_version_for_model(
    session: Session, model_version_id: int | None, embedder_model: str
) -> IndexVersion | None:
    """The newest index built for ``model_version_id`` (None: the plain blend), active or not."""
    model = IndexVersion.model_version_id
    return session.scalar(
        select(IndexVersion)
        .where(model.is_(None) if model_version_id is None else model == model_version_id)
        .where(IndexVersion.embedder_model == embedder_model)
        .order_by(IndexVersion.id.desc())
    )


def prune_index_versions(session: Session, newest: IndexVersion, keep: int) -> list[str]:
    """Delete the rows of ``newest``'s lineage (same model version and embedder) older than its
    ``keep`` newest, the active one excepted; return their file paths for the caller to remove
    once this transaction is committed (a file is never gone while its row is there)."""
    model = IndexVersion.model_version_id
    lineage = (
        select(IndexVersion.id, IndexVersion.path)
        .where(
            model.is_(None) if newest.model_version_id is None else model == newest.model_version_id
        )
        .where(IndexVersion.embedder_model == newest.embedder_model)
        .where(IndexVersion.id <= newest.id)
        .where(IndexVersion.active.is_(False) | (IndexVersion.id == newest.id))
        .order_by(IndexVersion.id.desc())
    )
    old = session.execute(lineage.offset(max(keep, 1))).all()  # newest is the first row
    if old:
        session.execute(delete(IndexVersion).where(IndexVersion.id.in_([row.id for row in old])))
    return [row.path for row in old]


def list_index_versions(session: Session) -> list[IndexVersion]:
    return list(session.scalars(select(IndexVersion).order_by(IndexVersion.id)))


def add_model_version(session: Session, version: ModelVersion, *, activate: bool) -> ModelVersion:
    session.add(version)
    session.flush()
    if activate:
        activate_model_version(session, version.id)
    return version


def activate_model_version(session: Session, version_id: int | None) -> None:
    """Make ``version_id`` the active model; ``None`` deactivates all (plain decayed blend)."""
    if version_id is not None and session.get(ModelVersion, version_id) is None:
        raise NotFound(f"model version {version_id} not found")
    session.execute(update(ModelVersion).values(active=ModelVersion.id == version_id))


def active_model_version(session: Session) -> ModelVersion | None:
    return session.scalar(
        select(ModelVersion).where(ModelVersion.active.is_(True)).order_by(ModelVersion.id.desc())
    )


def get_model_version(session: Session, version_id: int) -> ModelVersion:
    version = session.get(ModelVersion, version_id)
    if version is None:
        raise NotFound(f"model version {version_id} not found")
    return version


def list_model_versions(session: Session) -> list[ModelVersion]:
    return list(session.scalars(select(ModelVersion).order_by(ModelVersion.id)))
