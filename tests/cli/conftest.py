"""CLI test fixtures; the shared ones (databases, MovieLens) are in tests/conftest.py."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """DRIFTREC_* for a job or server on an (unmigrated) SQLite database in ``tmp_path``."""
    data_dir = tmp_path / "var"
    return {
        "DRIFTREC_DATA_DIR": str(data_dir),
        "DRIFTREC_DATABASE_URL": f"sqlite:///{data_dir / 'driftrec.db'}",
        "HF_HUB_OFFLINE": "1",
    }
