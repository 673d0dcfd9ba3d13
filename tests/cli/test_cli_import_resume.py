"""`driftrec import events` killed with SIGKILL after a batch committed and before its profile
rebuild: the rerun skips the stored events and still rebuilds those users' profiles."""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path

import pytest
from cli_helpers import fields, invoke, ok, spawn, write_items_jsonl
from sqlalchemy import func, select

from store.db import Database
from store.importing import EVENT_BATCH_SIZE
from store.models import Event, StaleProfile

HEADER = "id,user_id,item_id,type,value,timestamp\n"
USERS = 40


@pytest.fixture(params=["sqlite", "postgresql"])
def env(request, cli_env) -> dict[str, str]:
    if request.param == "sqlite":
        return cli_env
    return {**cli_env, "DRIFTREC_DATABASE_URL": request.getfixturevalue("empty_postgres_url")}


def count(db: Database, table) -> int:  # type: ignore[no-untyped-def]
    with db.read() as session:
        return session.scalar(select(func.count()).select_from(table))


def open_for_writing(fifo: Path, job, log: Path, deadline: float) -> int:  # type: ignore[no-untyped-def]
    """A blocking write end of ``fifo`` once the job opened it for reading."""
    while True:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: no reader yet
                raise
            assert job.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the import never opened its file"
            time.sleep(0.05)
            continue
        os.set_blocking(fd, True)
        return fd


def test_killed_import_leaves_no_profile_behind(tmp_path, env, movielens_dir):
    items = write_items_jsonl(movielens_dir, tmp_path / "items.jsonl", 0, 20)
    ids = [json.loads(line)["id"] for line in items.read_text().splitlines()]
    ok(invoke(env, "db", "upgrade"))
    ok(invoke(env, "import", "items", str(items)))
    # A first batch over USERS users, then more events for one other user only: a rerun that
    # rebuilt just the users of the events it inserted would leave the first USERS stale.
    lines = [
        f"e{i},u{i % USERS},{ids[i % len(ids)]},view,,{1714557600 + 60 * i}\n"
        for i in range(EVENT_BATCH_SIZE)
    ] + [f"late{i},late,{ids[i]},click,,{1714557600 + i}\n" for i in range(10)]
    fifo = tmp_path / "events.csv"
    os.mkfifo(fifo)
    log = tmp_path / "job.log"
    db = Database(env["DRIFTREC_DATABASE_URL"])
    try:
        job = spawn(env, "import", "events", str(fifo), log=log)
        deadline = time.monotonic() + 120
        fd = open_for_writing(fifo, job, log, deadline)
        try:
            # One line past the first batch: the job commits the batch, then waits for more.
            os.write(fd, (HEADER + "".join(lines[: EVENT_BATCH_SIZE + 1])).encode())
            while count(db, Event) < EVENT_BATCH_SIZE:
                assert job.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "the first batch never committed"
                time.sleep(0.05)
            job.kill()
            job.wait(timeout=30)
        finally:
            os.close(fd)
        assert count(db, StaleProfile) == USERS  # committed with the batch, not rebuilt

        complete = tmp_path / "all.csv"
        complete.write_text(HEADER + "".join(lines))
        output = ok(invoke(env, "import", "events", str(complete))).stdout
        assert fields(output, "events") == {
            "accepted": "10",
            "duplicates": str(EVENT_BATCH_SIZE),
            "rejected": "0",
        }
        # The killed run's users rebuilt from the log, this run's one user updated by its events.
        assert fields(output, "profiles") == {"updated": "1", "rebuilt": str(USERS)}
        assert count(db, StaleProfile) == 0
    finally:
        db.dispose()
    assert fields(ok(invoke(env, "verify")).stdout, "profiles") == {
        "checked": str(USERS + 1),
        "drifted": "0",
    }
