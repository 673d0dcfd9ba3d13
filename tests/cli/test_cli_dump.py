"""`driftrec export DIR` and `driftrec import dump DIR` round-trip everything: items with their
vectors, users, events, profiles, index and model versions with their files, and API keys."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import fields, invoke, ok, prepare_movielens
from sqlalchemy import func, select

from interest.ingest import EventInput
from interest.model import load_model
from service.runtime import Runtime
from store.db import Database
from store.dump import TABLES, _encode, _table
from store.keys import authenticate
from store.models import Event, Item, ModelVersion, User
from store.settings import load_settings
from store.versions import add_model_version, list_model_versions
from tests.interest.conftest import small_model

MOVIES = 30


def snapshot(url: str) -> dict[str, list[dict]]:
    """Every row of every table, encoded as in a dump; artefact paths replaced by checksums."""
    db = Database(url)
    try:
        with db.read() as session:
            out = {}
            for name in TABLES:
                table = _table(name)
                rows = []
                for mapping in session.execute(
                    select(table).order_by(*table.primary_key)
                ).mappings():
                    row = _encode(table, dict(mapping))
                    if "path" in row:
                        path = Path(row.pop("path"))
                        row["file_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
                    rows.append(row)
                out[name] = rows
            return out
    finally:
        db.dispose()


@pytest.fixture
def source(request, tmp_path, movielens_dir) -> tuple[dict[str, str], str]:
    """A database to back up: SQLite, or PostgreSQL when parametrized so."""
    backend = getattr(request, "param", "sqlite")
    env = {
        "DRIFTREC_DATA_DIR": str(tmp_path / "source"),
        "DRIFTREC_DATABASE_URL": f"sqlite:///{tmp_path / 'source.db'}"
        if backend == "sqlite"
        else request.getfixturevalue("postgres_url"),
    }
    prepare_movielens(env, movielens_dir, tmp_path, MOVIES)
    key = ok(invoke(env, "keys", "create", "--name", "backup", "--scope", "read")).stdout.strip()
    ok(
        invoke(
            env,
            "keys",
            "revoke",
            ok(invoke(env, "keys", "create", "--name", "old", "--scope", "admin"))
            .stdout.strip()
            .split("_")[1],
        )
    )
    _pending_events(env)
    # A model version with its file, a model as `driftrec train` saves one (training itself
    # is tested elsewhere).
    model_file = tmp_path / "source" / "models" / "model-1.npz"
    checksum = small_model().save(model_file)
    db = Database(env["DRIFTREC_DATABASE_URL"])
    try:
        with db.write() as session:
            version = ModelVersion(
                path=str(model_file),
                checksum=checksum,
                embedder_model="bundled:all-MiniLM-L6-v2",
                config={"epochs": 1},
                metrics={"ndcg": 0.1},
            )
            add_model_version(session, version, activate=False)
    finally:
        db.dispose()
    return env, key


def _pending_events(env: dict[str, str]) -> None:
    """Two events through the API's ingest path on a user who has a profile: they wait
    outside it (`store.models.PendingEvent`), so the dump must carry them as pending."""
    runtime = Runtime(load_settings({**env, "DRIFTREC_PROFILE_PENDING_MAX": "8"}))
    try:
        with runtime.db.read() as session:
            user = session.scalar(select(User.external_id).join(Event).limit(1))
            items = session.scalars(select(Item.external_id).order_by(Item.id).limit(2)).all()
        stamp = datetime(2024, 1, 1, tzinfo=UTC)
        # One names the answer it came from: a column the restore must carry too.
        events = [
            EventInput(
                f"late-{i}", user, item, "view", stamp, recomm_id=f"answer-{i}" if i else None
            )
            for i, item in enumerate(items)
        ]
        assert runtime.ingest(events).accepted == 2
    finally:
        runtime.close()


# From each database to the other (one PostgreSQL database per test), and SQLite to SQLite.
@pytest.mark.parametrize(
    ("source", "backend"),
    [("sqlite", "sqlite"), ("sqlite", "postgresql"), ("postgresql", "sqlite")],
    indirect=["source"],
)
def test_export_import_round_trip(tmp_path, source, backend, request):
    env, key = source
    dump = tmp_path / "dump"
    exported = fields(ok(invoke(env, "export", str(dump))).stdout, "dump")
    manifest = json.loads((dump / "manifest.json").read_text())
    assert manifest["rows"]["items"] == MOVIES and int(exported["events"]) > 0
    assert manifest["rows"]["pending_events"] == 2
    assert any(name.startswith("files/indexes/") for name in manifest["files"])
    assert "item_vectors.npy" in manifest["files"]
    assert key not in "".join(p.read_text(errors="ignore") for p in dump.glob("*.jsonl"))

    url = (
        f"sqlite:///{tmp_path / 'restored.db'}"
        if backend == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    target = {"DRIFTREC_DATA_DIR": str(tmp_path / "restored"), "DRIFTREC_DATABASE_URL": url}
    ok(invoke(target, "db", "upgrade"))
    imported = fields(ok(invoke(target, "import", "dump", str(dump))).stdout, "dump")
    assert imported == exported

    assert snapshot(url) == snapshot(env["DRIFTREC_DATABASE_URL"])
    assert fields(ok(invoke(target, "verify")).stdout, "profiles")["drifted"] == "0"
    db = Database(url)
    try:
        with db.read() as session:
            assert authenticate(session, key) is not None
            (model,) = list_model_versions(session)
        restored = load_model(Path(model.path), model.checksum)  # the file, checksum verified
        assert Path(model.path).is_relative_to(tmp_path / "restored")
        np.testing.assert_array_equal(restored.u, small_model().u)
        with db.write() as session:  # ids continue after the restored ones (sequences reset)
            fresh = ModelVersion(path="x", checksum="0" * 64, embedder_model="m")
            add_model_version(session, fresh, activate=False)
            assert fresh.id == session.scalar(select(func.max(ModelVersion.id)))
            assert fresh.id > 1
    finally:
        db.dispose()
    # The restored index serves: a reindex finds nothing to do.
    assert fields(ok(invoke(target, "reindex")).stdout, "reindex")["embedded"] == "0"

    again = invoke(target, "import", "dump", str(dump))
    assert again.exit_code == 1 and "not empty" in again.output


def test_a_corrupt_or_partial_dump_is_refused_before_writing(tmp_path, source):
    env, _ = source
    dump = tmp_path / "dump"
    ok(invoke(env, "export", str(dump)))
    existing = invoke(env, "export", str(dump))
    assert existing.exit_code == 1 and "already exists" in existing.output
    events = dump / "events.jsonl"
    events.write_text(events.read_text().replace('"rating"', '"purchase"', 1))
    target = {
        "DRIFTREC_DATA_DIR": str(tmp_path / "restored"),
        "DRIFTREC_DATABASE_URL": f"sqlite:///{tmp_path / 'restored.db'}",
    }
    ok(invoke(target, "db", "upgrade"))
    result = invoke(target, "import", "dump", str(dump))
    assert result.exit_code == 1 and "events.jsonl does not match its checksum" in result.output
    assert all(not rows for rows in snapshot(target["DRIFTREC_DATABASE_URL"]).values())
