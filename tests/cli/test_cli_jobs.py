"""`driftrec db`, `import`, `reindex`, `verify` through the real parts: SQLite and PostgreSQL,
the MiniLM model and FAISS, on catalogues cut from MovieLens."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import REPO_ROOT, fields, invoke, ok, write_items_jsonl, write_movielens
from sqlalchemy import select, update

from store.db import Database
from store.items import catalogue_revision, changed_since
from store.models import Profile, User

MOVIES = 50


@pytest.fixture(params=["sqlite", "postgresql"])
def blank_env(request, tmp_path) -> dict[str, str]:
    """DRIFTREC_* pointing at an empty, unmigrated database on each backend."""
    url = (
        f"sqlite:///{tmp_path / 'driftrec.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("empty_postgres_url")
    )
    return {"DRIFTREC_DATA_DIR": str(tmp_path / "var"), "DRIFTREC_DATABASE_URL": url}


def ratings(directory: Path) -> list[dict[str, str]]:
    with open(directory / "ratings.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_import_reindex_verify(tmp_path, blank_env, movielens_dir):
    env = blank_env
    directory = write_movielens(movielens_dir, tmp_path / "ml", 0, MOVIES)
    rows = ratings(directory)
    users = len({row["userId"] for row in rows})
    ok(invoke(env, "db", "upgrade"))

    output = ok(invoke(env, "import", "movielens", str(directory))).stdout
    assert f"items imported={MOVIES}" in output
    assert f"items embedded={MOVIES}" in output
    assert fields(output, "events") == {
        "accepted": str(len(rows)),
        "duplicates": "0",
        "rejected": "0",
    }
    assert fields(output, "profiles") == {"updated": str(users), "rebuilt": "0"}
    assert fields(ok(invoke(env, "verify")).stdout, "profiles") == {
        "checked": str(users),
        "drifted": "0",
    }

    first = fields(ok(invoke(env, "reindex")).stdout, "reindex")
    assert first["rebuilt"] == "yes"
    assert first["items"] == str(MOVIES)
    assert first["embedded"] == "0"  # the import embedded the new items already
    second = fields(ok(invoke(env, "reindex")).stdout, "reindex")
    assert second == {**first, "rebuilt": "no"}
    full = fields(ok(invoke(env, "reindex", "--full")).stdout, "reindex")
    assert full["rebuilt"] == "yes" and full["embedded"] == "0"
    assert int(full["index_version"]) > int(first["index_version"])

    db = Database(env["DRIFTREC_DATABASE_URL"])
    with db.read() as session:
        revision = catalogue_revision(session)
    rerun = ok(invoke(env, "import", "movielens", str(directory))).stdout
    with db.read() as session:
        assert changed_since(session, revision) == []  # servers have nothing to overlay
    db.dispose()
    assert fields(rerun, "events") == {
        "accepted": "0",
        "duplicates": str(len(rows)),
        "rejected": "0",
    }
    assert "embedded" not in rerun and "profiles" not in rerun  # nothing new
    assert fields(ok(invoke(env, "verify")).stdout, "profiles")["drifted"] == "0"


def _scale_accumulators(env: dict[str, str], user_id: int, factor: float) -> None:
    """Multiply a stored profile's accumulators (float32) by ``factor``."""
    db = Database(env["DRIFTREC_DATABASE_URL"])
    try:
        with db.write() as session:
            stored = session.scalar(select(Profile.accumulators).where(Profile.user_id == user_id))
            scaled = (np.frombuffer(stored, dtype="<f4") * factor).astype("<f4").tobytes()
            session.execute(
                update(Profile).where(Profile.user_id == user_id).values(accumulators=scaled)
            )
    finally:
        db.dispose()


def test_verify_reports_drift_and_rebuild_profiles_repairs_it(tmp_path, blank_env, movielens_dir):
    env = blank_env
    directory = write_movielens(movielens_dir, tmp_path / "ml", 0, MOVIES)
    users = len({row["userId"] for row in ratings(directory)})
    ok(invoke(env, "db", "upgrade"))
    ok(invoke(env, "import", "movielens", str(directory)))
    db = Database(env["DRIFTREC_DATABASE_URL"])
    try:
        with db.read() as session:
            user_id, name = session.execute(select(User.id, User.external_id).limit(1)).one()
    finally:
        db.dispose()
    _scale_accumulators(env, user_id, 0.0)  # one stored profile no longer matches its events

    drifted = invoke(env, "verify")
    assert drifted.exit_code == 1, drifted.output
    assert fields(drifted.output, "profiles") == {"checked": str(users), "drifted": "1"}
    assert f"user={name} " in drifted.output and "rebuild-profiles" in drifted.output
    unknown = invoke(env, "rebuild-profiles", "--user", "nobody")
    assert unknown.exit_code != 0 and "unknown user(s): nobody" in unknown.output
    repaired = ok(invoke(env, "rebuild-profiles", "--user", name)).stdout
    assert fields(repaired, "profiles") == {"rebuilt": "1"}
    assert fields(ok(invoke(env, "verify")).stdout, "profiles")["drifted"] == "0"

    # A 1% error: past the default tolerance (1e-4, room for float32 storage), not past 0.1.
    _scale_accumulators(env, user_id, 1.01)
    assert fields(invoke(env, "verify").output, "profiles")["drifted"] == "1"
    loose = ok(invoke(env, "verify", "--tolerance", "0.1")).stdout
    assert fields(loose, "profiles")["drifted"] == "0"
    ok(invoke(env, "rebuild-profiles", "--user", name))

    # Other decay settings: every stored profile differs from what they make of its events
    # until all are rebuilt with them.
    decay = {**env, "DRIFTREC_HALF_LIVES": "3600,inf"}
    assert fields(invoke(decay, "verify").output, "profiles")["drifted"] == str(users)
    assert fields(ok(invoke(decay, "rebuild-profiles")).stdout, "profiles") == {
        "rebuilt": str(users)
    }
    assert fields(ok(invoke(decay, "verify")).stdout, "profiles")["drifted"] == "0"


def test_import_items_and_events_files(tmp_path, cli_env, movielens_dir):
    items = write_items_jsonl(movielens_dir, tmp_path / "items.jsonl", 0, 10)
    ids = [json.loads(line)["id"] for line in items.read_text().splitlines()]
    events = tmp_path / "events.csv"
    events.write_text(
        "id,user_id,item_id,type,value,timestamp\n"
        f"e1,alice,{ids[0]},view,,2024-05-01T10:00:00Z\n"
        f"e2,alice,{ids[1]},rating,4.5,1714557600\n"
        f"e3,bob,{ids[2]},click,,2024-05-01T11:00:00+02:00\n"
        "e4,bob,no-such-item,view,,2024-05-01T12:00:00Z\n"
    )
    more = tmp_path / "events.jsonl"
    more.write_text(
        json.dumps(
            {"id": "e5", "user_id": "carol", "item_id": ids[3], "type": "like", "timestamp": 1}
        )
        + "\n"
    )
    ok(invoke(cli_env, "db", "upgrade"))
    output = ok(invoke(cli_env, "import", "items", "--no-embed", str(items))).stdout
    assert "items imported=10" in output and "embedded" not in output

    # Profiles are built from item vectors: the items are embedded before the events load.
    output = ok(invoke(cli_env, "import", "events", str(events))).stdout
    assert "items embedded=10" in output
    assert fields(output, "events") == {"accepted": "3", "duplicates": "0", "rejected": "1"}
    assert fields(output, "profiles") == {"updated": "2", "rebuilt": "0"}
    output = ok(invoke(cli_env, "import", "events", str(events))).stdout
    assert fields(output, "events") == {"accepted": "0", "duplicates": "3", "rejected": "1"}
    output = ok(invoke(cli_env, "import", "events", str(more))).stdout
    assert fields(output, "profiles")["updated"] == "1" and "embedded" not in output
    assert fields(ok(invoke(cli_env, "reindex")).stdout, "reindex")["embedded"] == "0"
    assert fields(ok(invoke(cli_env, "verify")).stdout, "profiles") == {
        "checked": "3",
        "drifted": "0",
    }


def test_malformed_file_is_one_line_error(tmp_path, cli_env):
    bad = tmp_path / "items.jsonl"
    bad.write_text('{"id": "1", "title": "Fine"}\n{"id": "2"}\n')
    ok(invoke(cli_env, "db", "upgrade"))
    result = invoke(cli_env, "import", "items", "--no-embed", str(bad))
    assert result.exit_code == 1
    assert f"{bad}:2: title must be a non-empty string" in result.output
    assert "Traceback" not in result.output


def test_unmigrated_database_names_the_fix(cli_env):
    for args in (["reindex"], ["verify"], ["db", "current", "--check"]):
        result = invoke(cli_env, *args)
        assert result.exit_code == 3, (args, result.output)
        assert "driftrec db upgrade" in result.output

    served = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve", "--port", "1"],
        cwd=REPO_ROOT,
        env={**os.environ, **cli_env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert served.returncode == 3
    assert "run `driftrec db upgrade`" in served.stderr
    assert "Traceback" not in served.stderr


def test_a_jobs_sqlite_database_checkpoints_in_the_background(cli_env):
    """Jobs (bulk import, reindex, rebuilds) leave the WAL's copy into the database to a thread
    of their own, as servers do: their commits do not carry the checkpoints."""
    from service.cli import App
    from store.settings import load_settings

    Path(cli_env["DRIFTREC_DATA_DIR"]).mkdir()
    ok(invoke(cli_env, "db", "upgrade"))
    app = App(load_settings(cli_env))
    runtime = app.runtime
    try:
        assert runtime.db._checkpointer is not None
    finally:
        runtime.close()
    assert not runtime.db._checkpointer._thread.is_alive()
