"""A reindex killed with SIGKILL mid-embedding resumes where it stopped when rerun."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from cli_helpers import fields, invoke, ok, spawn, write_items_jsonl
from sqlalchemy import func, select

from indexer.vector_index import VectorIndex
from store.db import Database
from store.models import IndexVersion, Item
from store.versions import active_index_version

ITEMS = 200
BATCH = 8


def embedded_count(db: Database) -> int:
    with db.read() as session:
        return session.scalar(select(func.count()).where(Item.vector.is_not(None)))


def test_killed_reindex_embeds_only_the_rest(tmp_path, cli_env, movielens_dir):
    items = write_items_jsonl(movielens_dir, tmp_path / "items.jsonl", 0, ITEMS)
    ok(invoke(cli_env, "db", "upgrade"))
    ok(invoke(cli_env, "import", "items", "--no-embed", str(items)))
    db = Database(cli_env["DRIFTREC_DATABASE_URL"])
    try:
        job = spawn(cli_env, "reindex", "--batch-size", str(BATCH), log=tmp_path / "job.log")
        deadline = time.monotonic() + 120
        while embedded_count(db) == 0:
            assert job.poll() is None, (tmp_path / "job.log").read_text()
            assert time.monotonic() < deadline, "no batch committed in time"
            time.sleep(0.05)
        job.kill()
        job.wait(timeout=30)
        done = embedded_count(db)
        assert 0 < done < ITEMS, "kill the job between its first and its last batch"
        with db.read() as session:
            assert session.scalar(select(func.count()).select_from(IndexVersion)) == 0

        result = fields(ok(invoke(cli_env, "reindex")).stdout, "reindex")
        assert result["embedded"] == str(ITEMS - done)
        assert result["items"] == str(ITEMS)
        assert result["rebuilt"] == "yes"
        assert embedded_count(db) == ITEMS
        with db.read() as session:
            version = active_index_version(session)
            assert version is not None and str(version.id) == result["index_version"]
            assert version.item_count == ITEMS
            path, checksum = Path(version.path), version.checksum
        assert hashlib.sha256(path.read_bytes()).hexdigest() == checksum
        assert len(VectorIndex.load(path, checksum)) == ITEMS
    finally:
        db.dispose()
