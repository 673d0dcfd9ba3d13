"""Migrations: upgrade from empty, no drift between models and migrations, schema checks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from alembic import command
from sqlalchemy import inspect, text

from store.db import make_engine
from store.errors import SchemaOutOfDate
from store.migrate import (
    alembic_config,
    current_revision,
    ensure_schema_current,
    head_revision,
    upgrade,
)
from store.models import Base

T0 = datetime(2024, 1, 1, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/empty.db"
    return request.getfixturevalue("empty_postgres_url")


def _engine(url: str) -> Iterator:
    engine = make_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()


def test_upgrade_from_empty_creates_every_table(empty_url: str) -> None:
    upgrade(empty_url)
    for engine in _engine(empty_url):
        assert current_revision(engine) == head_revision(empty_url)
        tables = set(inspect(engine).get_table_names())
        assert set(Base.metadata.tables) <= tables
        ensure_schema_current(engine)  # does not raise


def test_models_match_migrations(database_url: str) -> None:
    command.check(alembic_config(database_url))  # raises when autogenerate finds a difference


def test_unmigrated_database_is_reported_with_the_fix(empty_url: str) -> None:
    for engine in _engine(empty_url):
        with pytest.raises(SchemaOutOfDate, match="driftrec db upgrade") as raised:
            ensure_schema_current(engine)
    assert "none" in str(raised.value)


def test_downgrade_to_base_and_back(empty_url: str) -> None:
    upgrade(empty_url)
    command.downgrade(alembic_config(empty_url), "base")
    for engine in _engine(empty_url):
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        with pytest.raises(SchemaOutOfDate):
            ensure_schema_current(engine)
    upgrade(empty_url)
    for engine in _engine(empty_url):
        ensure_schema_current(engine)


def test_profile_recent_buffer_converts_to_packed_bytes_and_back(empty_url: str) -> None:
    """0005 packs the JSON recent buffer of existing profiles; its downgrade restores it."""
    buffers = {1: [[1700000000.123456, 42, 1.0], [1700000060.5, 7, -4.0]], 2: []}
    upgrade(empty_url, "0004")
    for engine in _engine(empty_url):
        with engine.begin() as connection:
            for user_id, buffer in buffers.items():
                connection.execute(
                    text("INSERT INTO users (id, external_id, created_at) VALUES (:u, :x, :now)"),
                    {"u": user_id, "x": f"u{user_id}", "now": T0},
                )
                connection.execute(
                    text(
                        "INSERT INTO profiles (user_id, dim, half_lives, accumulators, weight_sums,"
                        " ref_time, recent, event_count, version, updated_at) VALUES (:u, 2,"
                        " '[0.0]', :acc, :ws, 0.0, :recent, 2, 1, :now)"
                    ),
                    {"u": user_id, "acc": bytes(16), "ws": bytes(8), "recent": json.dumps(buffer)}
                    | {"now": T0},
                )
    upgrade(empty_url)
    for engine in _engine(empty_url):
        with engine.connect() as connection:
            packed = dict(connection.execute(text("SELECT user_id, recent FROM profiles")).all())
            if engine.dialect.name == "postgresql":  # accumulators: TOASTed, not compressed
                storage = connection.execute(
                    text(
                        "SELECT attstorage FROM pg_attribute WHERE attrelid = 'profiles'::regclass"
                        " AND attname = 'accumulators'"
                    )
                ).scalar()
                assert storage == "e"
    # Little-endian float64 triples (epoch seconds, item id, weight), as interest.profile reads.
    unpacked = {
        user_id: np.frombuffer(bytes(value), dtype="<f8").reshape(-1, 3).tolist()
        for user_id, value in packed.items()
    }
    assert unpacked == buffers
    command.downgrade(alembic_config(empty_url), "0004")
    for engine in _engine(empty_url):
        with engine.connect() as connection:
            restored = dict(connection.execute(text("SELECT user_id, recent FROM profiles")).all())
    as_json = {k: json.loads(v) if isinstance(v, str) else v for k, v in restored.items()}
    assert as_json == buffers


def test_users_with_events_and_no_profile_are_marked_for_the_rebuild(empty_url: str) -> None:
    """0008: what a killed import left before imports marked their users is marked by the
    migration (a user with events and no profile), so the next import rebuilds it."""
    upgrade(empty_url, "0007")
    for engine in _engine(empty_url):
        with engine.begin() as connection:
            for user_id in (1, 2):
                connection.execute(
                    text("INSERT INTO users (id, external_id, created_at) VALUES (:u, :x, :now)"),
                    {"u": user_id, "x": f"u{user_id}", "now": T0},
                )
            connection.execute(
                text(
                    "INSERT INTO items (id, external_id, title, categories, properties, "
                    "available, content_hash, created_at, updated_at, revision) VALUES "
                    "(1, 'i1', 'Item', '[]', '{}', :yes, 'h', :now, :now, 1)"
                ),
                {"yes": True, "now": T0},
            )
            for n, user_id in enumerate((1, 1, 2)):
                connection.execute(
                    text(
                        "INSERT INTO events (event_id, user_id, item_id, type, timestamp, "
                        "received_at) VALUES (:e, :u, 1, 'view', :now, :now)"
                    ),
                    {"e": f"e{n}", "u": user_id, "now": T0},
                )
            connection.execute(
                text(
                    "INSERT INTO profiles (user_id, dim, half_lives, accumulators, weight_sums,"
                    " ref_time, recent, event_count, version, updated_at) VALUES (2, 2,"
                    " '[0.0]', :acc, :ws, 0.0, :recent, 1, 1, :now)"
                ),
                {"acc": bytes(16), "ws": bytes(8), "recent": b"", "now": T0},
            )
    upgrade(empty_url)
    for engine in _engine(empty_url):
        with engine.connect() as connection:
            marked = connection.execute(text("SELECT user_id FROM stale_profiles")).all()
    assert [user_id for (user_id,) in marked] == [1]
