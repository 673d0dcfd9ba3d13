"""SQLAlchemy 2.0 models. The schema changes only through Alembic migrations in `migrations/`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    or_,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql.elements import ColumnElement

from store.types import UTCDateTime, utcnow

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

EXTERNAL_ID_LENGTH = 256
# Short enough that "<name>:treatment" fits a recommendation session's arm column.
EXPERIMENT_NAME_LENGTH = 40

# BIGINT primary keys on PostgreSQL, INTEGER (the rowid alias, so autoincrement works) on SQLite.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON(), list[str]: JSON()}


class Item(Base):
    __tablename__ = "items"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    external_id: Mapped[str] = mapped_column(String(EXTERNAL_ID_LENGTH), unique=True)
    title: Mapped[str] = mapped_column(Text)
    text: Mapped[str | None] = mapped_column(Text)
    categories: Mapped[list[str]] = mapped_column(default=list)
    properties: Mapped[dict[str, Any]] = mapped_column(default=dict)
    available: Mapped[bool] = mapped_column(Boolean, default=True)
    expires_at: Mapped[datetime | None]
    # Hash of the text the embedder sees; the vector is current when vector_hash == content_hash
    # and vector_model is the active embedder.
    content_hash: Mapped[str] = mapped_column(String(64))
    vector: Mapped[bytes | None] = mapped_column(LargeBinary)
    vector_dim: Mapped[int | None]
    vector_model: Mapped[str | None] = mapped_column(String(200))
    vector_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    deleted_at: Mapped[datetime | None]
    # Catalogue revision of the last change to this row (see `store.items.next_revision`): servers
    # apply changes newer than their index to their in-memory overlay.
    revision: Mapped[int] = mapped_column(BigInteger, default=0, index=True)


def unservable_condition() -> ColumnElement[bool]:
    """Items a server must not answer with: deleted, unavailable, or with an expiry time (which
    is checked at query time). Shared by `store.items.unservable_rows` and the partial index
    below, so that the databases use the index for that query."""
    return or_(
        Item.deleted_at.is_not(None), Item.available.is_(False), Item.expires_at.is_not(None)
    )


# Every server process reads the unservable items when it loads an index version: without this
# index, a scan of the whole items table with its vectors (0.1 s of CPU per process at 100k items,
# in every worker at once when a new version is published under load).
Index(
    "ix_items_unservable",
    Item.id,
    sqlite_where=unservable_condition(),
    postgresql_where=unservable_condition(),
)


#: The covering index that names an answer's items (`store.items.item_names`), on SQLite only:
#: why, and why not on PostgreSQL, in migration 0011. Not in this metadata (it exists on one
#: dialect).
ITEM_NAMES_INDEX = "ix_items_names"
#: Profiles' versions without their 9-18 KB rows (`store.events.profile_versions`), on SQLite only:
#: why in migration 0013. Left out of this metadata, as `ITEM_NAMES_INDEX`.
PROFILE_VERSIONS_INDEX = "ix_profiles_version"
#: The indexes above, which exist on SQLite only (migrations/env.py leaves them out of
#: autogenerate's comparison).
SQLITE_ONLY_INDEXES = frozenset({ITEM_NAMES_INDEX, PROFILE_VERSIONS_INDEX})
#: The events' foreign keys, which on PostgreSQL a statement-level trigger enforces instead,
#: under the same names (migration 0014; migrations/env.py leaves them out of autogenerate's
#: comparison there).
EVENT_REFERENCES = frozenset({"fk_events_user_id_users", "fk_events_item_id_items"})


class Counter(Base):
    """Named monotonic counters; bumping one locks its row, so revisions commit in order."""

    __tablename__ = "counters"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    external_id: Mapped[str] = mapped_column(String(EXTERNAL_ID_LENGTH), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Event(Base):
    __tablename__ = "events"
    __table_args__ = (Index("ix_events_user_id_timestamp", "user_id", "timestamp"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    event_id: Mapped[str] = mapped_column(String(EXTERNAL_ID_LENGTH), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), index=True)
    type: Mapped[str] = mapped_column(String(64))
    value: Mapped[float | None] = mapped_column(Float)
    timestamp: Mapped[datetime]
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The recommendation answer the event came from (attribution), when the caller says so.
    recomm_id: Mapped[str | None] = mapped_column(String(64))


# Attribution reads events by the answer they name (`store.recommendations`); most events
# (imports, clients that send no recomm_id) name none, and an entry per NULL only made every
# insert dearer. Both databases use the index for a comparison on the column, which implies
# it is not NULL.
Index(
    "ix_events_recomm_id",
    Event.recomm_id,
    sqlite_where=Event.recomm_id.is_not(None),
    postgresql_where=Event.recomm_id.is_not(None),
)


class Profile(Base):
    """A user's decayed accumulators, kept current by every event (see `interest.profile`)."""

    __tablename__ = "profiles"

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    dim: Mapped[int]
    # Seconds; ``inf`` is stored as 0 (no decay). One accumulator per half-life.
    half_lives: Mapped[list[float]] = mapped_column(JSON)
    # float32 array of shape (len(half_lives), dim), at the reference time (float64 in rows
    # written before 2026-12-02; `interest.profile.decode_accumulators` reads both).
    accumulators: Mapped[bytes] = mapped_column(LargeBinary)
    # float64 array (len(half_lives),): the decayed sum of weights of each accumulator.
    weight_sums: Mapped[bytes] = mapped_column(LargeBinary)
    ref_time: Mapped[float] = mapped_column(Float)  # epoch seconds of the newest event
    # The most recent events, newest last, bounded: little-endian float64 triples (epoch seconds,
    # item id, weight), packed by `interest.profile` (JSON text cost more than the rest of a write).
    recent: Mapped[bytes] = mapped_column(LargeBinary, default=b"")
    event_count: Mapped[int] = mapped_column(Integer, default=0)
    last_event_at: Mapped[datetime | None]
    version: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __mapper_args__ = {"version_id_col": version}


class PendingEvent(Base):
    """An event stored but not yet folded into its user's stored profile (`Profile`).

    An event on a user who has a profile is kept here instead of rewriting the profile (9 KB
    at the default settings) while the user has at most ``DRIFTREC_PROFILE_PENDING_MAX`` such
    events; readers fold them into the stored state (`interest.pending`). The event past the
    bound folds them all in and clears them. Rows are added and removed only by
    transactions that hold the user's profile row (on PostgreSQL: locked ``FOR UPDATE``).
    """

    __tablename__ = "pending_events"

    event_id: Mapped[str] = mapped_column(
        ForeignKey("events.event_id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)


class StaleProfile(Base):
    """A user whose profile lags events a bulk import stored, until that import folds them in
    or `interest.rebuild` rebuilds the profile from the log.

    Bulk imports insert events and mark their users here in the same transaction, under their
    own ``import_id``; folding the import's events clears its marks, a rebuild clears all of
    the user's. A killed import leaves its marks, so the rerun (or `driftrec rebuild-profiles`)
    still rebuilds those users, although their events are then skipped as already stored.
    """

    __tablename__ = "stale_profiles"

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    import_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    #: The import's first batch (counted from 0) whose events on this user are not in the
    #: profile: a rebuild may clear the mark between two batches, and the next batch marks
    #: the user again from its own number, so that the fold skips what the rebuild read.
    since_batch: Mapped[int] = mapped_column(Integer, default=0)


class IndexVersion(Base):
    __tablename__ = "index_versions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    path: Mapped[str] = mapped_column(Text)
    checksum: Mapped[str] = mapped_column(String(64))
    item_count: Mapped[int]
    kind: Mapped[str] = mapped_column(String(64))
    embedder_model: Mapped[str] = mapped_column(String(200))
    model_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL")
    )
    fingerprint: Mapped[str] = mapped_column(String(64))
    # The catalogue revision the file reflects; later item changes are applied on load.
    catalogue_revision: Mapped[int] = mapped_column(BigInteger, default=0)
    # The index build parameters (indexer.vector_index.BUILD_SPEC) the file was made with.
    build_spec: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    active: Mapped[bool] = mapped_column(Boolean, default=False)


class ModelVersion(Base):
    """A trained correction network: file on disk plus its checksum, config and metrics."""

    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    path: Mapped[str] = mapped_column(Text)
    checksum: Mapped[str] = mapped_column(String(64))
    embedder_model: Mapped[str] = mapped_column(String(200))
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    active: Mapped[bool] = mapped_column(Boolean, default=False)


class Experiment(Base):
    """An A/B test: ``percent`` of users, chosen by a hash of the experiment's name and the user
    id, are served by ``model_version_id`` (None: the plain decayed blend) through an index built
    for it; everyone else by the active model. At most one runs (``stopped_at`` is None)."""

    __tablename__ = "experiments"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(EXPERIMENT_NAME_LENGTH), unique=True)
    model_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE")
    )
    percent: Mapped[float] = mapped_column(Float)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    stopped_at: Mapped[datetime | None]


class ApiKey(Base):
    """An API key: only a sha256 of the token is kept; ``prefix`` finds the row."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    # The token's public part (``drk_<prefix>_<secret>``), unique, to look a key up by.
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    # Comma-separated subset of read, write, admin (admin implies the others).
    scopes: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]


class RecommendationSession(Base):
    """One recommendation request, kept so its next pages never repeat an item and so events
    can be attributed to the model version (and experiment arm) that served it."""

    __tablename__ = "recommendation_sessions"

    recomm_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # The caller's user id; None for an anonymous request (examples in ``params``).
    user_external_id: Mapped[str | None] = mapped_column(String(EXTERNAL_ID_LENGTH))
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Internal ids of the items answered so far, in order.
    shown: Mapped[list[int]] = mapped_column(JSON, default=list)
    shown_count: Mapped[int] = mapped_column(Integer, default=0)
    strategy: Mapped[str] = mapped_column(String(32))
    model_version_id: Mapped[int | None]
    arm: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)


# Erasing a user deletes their answers (`store.recommendations.delete_user_sessions`): without
# this, a scan of every answer kept (one row per recommendation request, for 30 days). Anonymous
# answers name no user and get no entry.
Index(
    "ix_recommendation_sessions_user",
    RecommendationSession.user_external_id,
    sqlite_where=RecommendationSession.user_external_id.is_not(None),
    postgresql_where=RecommendationSession.user_external_id.is_not(None),
)
