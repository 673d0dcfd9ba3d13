"""Fixtures for the CLI tests: the MovieLens source, per-test DRIFTREC_* environments, and a
fresh PostgreSQL database per module."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import MOVIELENS

POSTGRES_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture(scope="session")
def movielens_source() -> Path:
    if not (MOVIELENS / "movies.csv").is_file():
        pytest.skip(f"MovieLens dataset not found at {MOVIELENS}")
    return MOVIELENS


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    data_dir = tmp_path / "var"
    return {
        "DRIFTREC_DATA_DIR": str(data_dir),
        "DRIFTREC_DATABASE_URL": f"sqlite:///{data_dir / 'driftrec.db'}",
        "HF_HUB_OFFLINE": "1",
    }


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one module; dropped afterwards."""
    import psycopg

    name = f"driftrec_cli_{uuid.uuid4().hex[:12]}"
    admin = POSTGRES_ADMIN.replace("+psycopg", "")
    try:
        connection = psycopg.connect(admin, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable at {admin}: {exc}")
    with connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield POSTGRES_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
