"""Migrations: upgrade from empty, no drift between models and migrations, schema checks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import inspect

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
