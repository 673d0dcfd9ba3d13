"""Reading an import's input in a forked child process (`store.read_ahead`)."""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from store import read_ahead as read_ahead_module
from store.db import Database
from store.errors import ImportFormatError
from store.importing import EventRecord, bulk_upsert_items, import_events, read_events
from store.items import ItemInput
from store.models import Event, User
from store.read_ahead import can_read_ahead, read_ahead

pytestmark = pytest.mark.skipif(not can_read_ahead(), reason="this platform cannot fork")


def _pid_and_batch(batch: list[int]) -> tuple[int, list[int]]:
    return os.getpid(), batch


def test_batches_are_converted_in_a_child_in_order() -> None:
    batches = ([n, n + 1] for n in range(0, 10, 2))
    seen = list(read_ahead(batches, _pid_and_batch))
    assert [batch for _, batch in seen] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    pids = {pid for pid, _ in seen}
    assert len(pids) == 1 and os.getpid() not in pids


def test_without_fork_the_batches_are_converted_here(monkeypatch) -> None:
    monkeypatch.setattr(read_ahead_module, "can_read_ahead", lambda: False)
    seen = list(read_ahead(iter([[1], [2]]), _pid_and_batch))
    assert seen == [(os.getpid(), [1]), (os.getpid(), [2])]


def _fails_on_third() -> Iterator[list[int]]:
    yield [1]
    yield [2]
    raise ImportFormatError(Path("events.csv"), 7, "bad line")


def test_an_error_comes_after_the_batches_read_before_it() -> None:
    got = []
    with pytest.raises(ImportFormatError, match="events.csv:7: bad line") as raised:
        for _, batch in read_ahead(_fails_on_third(), _pid_and_batch):
            got.append(batch)
    assert got == [[1], [2]]
    assert (raised.value.path, raised.value.line, raised.value.reason) == (
        "events.csv",
        7,
        "bad line",
    )


class _Unpicklable(Exception):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.lock = threading.Lock()  # cannot be pickled


def _raise_unpicklable(batch: list[int]) -> list[int]:
    raise _Unpicklable("the reader broke")


def test_an_error_that_cannot_be_pickled_comes_as_its_text() -> None:
    with pytest.raises(RuntimeError, match="_Unpicklable: the reader broke"):
        list(read_ahead(iter([[1]]), _raise_unpicklable))


def _exit_at_once(batch: list[int]) -> list[int]:
    os._exit(3)


def test_a_child_that_dies_is_an_error_not_an_end() -> None:
    with pytest.raises(RuntimeError, match="exit code 3"):
        list(read_ahead(iter([[1]]), _exit_at_once))


def test_stopping_early_stops_the_child() -> None:
    endless = ([n] for n in iter(int, 1))  # never ends
    batches = read_ahead(endless, _pid_and_batch)
    child_pid, _ = next(batches)
    batches.close()
    with pytest.raises(ProcessLookupError):
        os.kill(child_pid, 0)  # killed and reaped


def test_import_read_ahead_stores_what_reading_in_process_stores(
    db: Database, tmp_path: Path
) -> None:
    """The same file imported with and without the child process, in batches of 3 (so the
    child reads ahead): the same events, users and timestamps, to the microsecond."""
    path = tmp_path / "events.csv"
    lines = ["id,user_id,item_id,type,value,timestamp"]
    for n in range(20):
        stamp = f"2024-03-01T10:{n:02d}:07.{n * 37:06d}+02:00" if n % 2 else str(1.7e9 + n / 7)
        lines.append(f"{{tag}}{n},u{n % 4},{'a' if n % 3 else 'b'},view,{n or ''},{stamp}")
    lines.append("{tag}0,u9,a,view,,2024-03-01")  # a repeated id: a duplicate
    lines.append("{tag}x,u9,gone,view,,2024-03-01")  # an unknown item: rejected
    with db.write() as session:
        bulk_upsert_items(session, [ItemInput("a", "A"), ItemInput("b", "B")])

    stored = {}
    for tag, in_child in (("p", False), ("c", True)):
        path.write_text("\n".join(line.format(tag=tag) for line in lines) + "\n")
        stats = import_events(db, read_events(path), batch_size=3, parse_in_child=in_child)
        assert (stats.accepted, stats.duplicates, stats.rejected) == (20, 1, 1)
        with db.read() as session:
            rows = session.execute(
                select(
                    Event.event_id, User.external_id, Event.item_id, Event.value, Event.timestamp
                )
                .join(User, User.id == Event.user_id)
                .where(Event.event_id.like(f"{tag}%"))
                .order_by(Event.id)
            ).all()
        stored[tag] = [(event_id[1:], *rest) for event_id, *rest in rows]
    assert len(stored["c"]) == 20
    assert stored["c"] == stored["p"]


@pytest.mark.parametrize("progress", [False, True])
def test_an_error_in_the_writer_stops_the_child_at_once(db: Database, progress: bool) -> None:
    """A failing write (here the commit callback) ends the import with the child already
    stopped, while the error (and its traceback, which holds the import's frame) is alive."""
    with db.write() as session:
        bulk_upsert_items(session, [ItemInput("a", "A")])

    def records():  # type: ignore[no-untyped-def]
        for n in iter(int, 1):  # never ends
            yield EventRecord(f"e{n}", "u1", "a", "view", None, datetime(2024, 1, 1, tzinfo=UTC))

    def fail(events, batch):  # type: ignore[no-untyped-def]
        raise RuntimeError("the writer broke")

    try:
        import_events(db, records(), batch_size=10, on_commit=fail, progress=progress)
    except RuntimeError as exc:
        assert str(exc) == "the writer broke"
        # Checked while the exception is being handled: its traceback holds the import's
        # frame (and so its generators) alive.
        assert multiprocessing.active_children() == []
    else:
        pytest.fail("the import did not fail")
