"""Import readers (MovieLens layouts, driftrec JSONL/CSV) and bulk writers on both backends."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from store import importing
from store.db import Database
from store.errors import ImportFormatError, StoreError
from store.events import count_events, delete_user, user_events, user_ids
from store.importing import (
    EventBatch,
    EventRecord,
    ImportStats,
    bulk_insert_events,
    bulk_upsert_items,
    detect_movielens_format,
    import_events,
    import_items,
    movielens_events,
    movielens_items,
    parse_timestamp,
    read_events,
    read_items_jsonl,
)
from store.items import ItemInput, content_hash, count_live_items, delete_item, get_item
from store.models import User

LAYOUTS = {"ml-latest-small": "csv", "ml-100k": "100k", "ml-1m": "1m"}
AMELIE = "Amélie (Fabuleux destin d'Amélie Poulain, Le) (2001)"


def _ts(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _record(event_id: str, user: str, item: str, seconds: int = 0) -> EventRecord:
    return EventRecord(event_id, user, item, "view", None, _ts(1_700_000_000 + seconds))


# --- readers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dataset", LAYOUTS)
def test_movielens_items_in_every_layout(tiny_movielens_dirs: dict[str, Path], dataset: str):
    directory = tiny_movielens_dirs[dataset]
    assert detect_movielens_format(directory) == LAYOUTS[dataset]
    items = {item.external_id: item for item in movielens_items(directory)}
    assert list(items) == ["1", "2", "3", "4"]
    toy = items["1"]
    assert toy.title == "Toy Story (1995)"
    assert toy.text == "Genres: Adventure, Animation, Children"
    assert toy.categories == ["Adventure", "Animation", "Children"]
    assert items["3"].title == AMELIE  # latin-1 in ml-100k and ml-1m, quoted CSV in ml-latest
    assert items["3"].categories == ["Comedy", "Romance"]
    assert (items["4"].title, items["4"].text, items["4"].categories) == (
        "Untitled, The (2000)",
        None,
        [],
    )


@pytest.mark.parametrize("dataset", LAYOUTS)
def test_movielens_events_in_every_layout(tiny_movielens_dirs: dict[str, Path], dataset: str):
    events = list(movielens_events(tiny_movielens_dirs[dataset]))
    assert events[0] == EventRecord(
        "ml-1-1-964982703", "1", "1", "rating", None, datetime(2000, 7, 30, 18, 45, 3, tzinfo=UTC)
    )
    assert [(e.user_id, e.item_id) for e in events] == [
        ("1", "1"),
        ("1", "3"),
        ("2", "1"),
        ("2", "2"),
        ("10", "3"),
    ]
    assert events[-1].timestamp == datetime(1970, 1, 1, tzinfo=UTC)
    assert all(e.value is None and e.timestamp.utcoffset() == timedelta(0) for e in events)


def test_movielens_tags_are_appended_when_asked(tiny_movielens_dirs: dict[str, Path]) -> None:
    directory = tiny_movielens_dirs["ml-latest-small"]
    items = {item.external_id: item for item in movielens_items(directory, include_tags=True)}
    assert items["1"].text == "Genres: Adventure, Animation, Children. Tags: pixar, funny, warm"
    assert items["2"].text == "Genres: Adventure, Fantasy"
    # without tags.csv the option changes nothing
    plain = {
        i.external_id: i for i in movielens_items(tiny_movielens_dirs["ml-1m"], include_tags=True)
    }
    assert plain["1"].text == "Genres: Adventure, Animation, Children"


def test_not_a_movielens_directory(tmp_path: Path) -> None:
    (tmp_path / "movies.csv").write_text("movieId,title,genres\n")
    with pytest.raises(ImportFormatError, match="not a MovieLens directory"):
        list(movielens_items(tmp_path))


def test_bad_movielens_line_names_file_and_line(tiny_movielens_dirs: dict[str, Path]) -> None:
    ratings = tiny_movielens_dirs["ml-1m"] / "ratings.dat"
    ratings.write_text(ratings.read_text() + "7::1::5\n", encoding="latin-1")
    with pytest.raises(ImportFormatError, match=r"ratings\.dat:6: expected 4") as raised:
        list(movielens_events(ratings.parent))
    assert raised.value.line == 6


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2024-03-01T12:00:00Z", datetime(2024, 3, 1, 12, tzinfo=UTC)),
        ("2024-03-01T14:00:00+02:00", datetime(2024, 3, 1, 12, tzinfo=UTC)),
        ("2024-03-01 12:00:00", datetime(2024, 3, 1, 12, tzinfo=UTC)),  # naive means UTC
        (1709294400, datetime(2024, 3, 1, 12, tzinfo=UTC)),
        (1709294400.5, datetime(2024, 3, 1, 12, 0, 0, 500_000, tzinfo=UTC)),
        ("1709294400", datetime(2024, 3, 1, 12, tzinfo=UTC)),
    ],
)
def test_parse_timestamp(raw: object, expected: datetime) -> None:
    parsed = parse_timestamp(raw)
    assert parsed == expected and parsed.tzinfo is UTC


@pytest.mark.parametrize("raw", ["yesterday", "", True, None, "nan", 1e300])
def test_parse_timestamp_rejects(raw: object) -> None:
    with pytest.raises(ValueError):
        parse_timestamp(raw)


def _epoch_first(text: str) -> datetime | str:
    """How a timestamp string was read before ISO 8601 texts skipped the float() attempt:
    epoch seconds when float() takes it, else ISO 8601 (naive means UTC), else its error."""
    try:
        seconds = float(text.strip())
    except ValueError:
        try:
            parsed = datetime.fromisoformat(text.strip())
        except ValueError:
            return "error"
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return "error"


@pytest.mark.parametrize(
    "raw",
    [
        "1709294400",
        "+1709294400",
        "-86400",
        "1709294400.",
        ".5",
        "1.7e9",
        "1.7E+9",
        " 42 ",
        "20240301",
        "2024",
        "1_709_294_400",
        "inf",
        "nan",
        "1e300",
        "0x10",
        "١٧٠٩٢٩٤٤٠٠",
        "2024-03-01",
        "2024-03-01T12:00",
        "2024-03-01T12:00:00.25+05:30",
        "20240301T120000Z",
        "2024-W09-5",
        "12:00",
        "-",
        "e5",
        "1.2.3",
        "",
    ],
)
def test_parse_timestamp_reads_strings_as_epoch_first_did(raw: str) -> None:
    try:
        parsed: datetime | str = parse_timestamp(raw)
    except ValueError:
        parsed = "error"
    assert parsed == _epoch_first(raw)


def test_events_csv_columns_in_any_order_value_optional(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text(
        "timestamp,type,item_id,user_id,id\n1709294400,view,i1,u1,e1\n2024-03-01,like,i2,u2,e2\n"
    )
    assert list(read_events(path)) == [
        EventRecord("e1", "u1", "i1", "view", None, datetime(2024, 3, 1, 12, tzinfo=UTC)),
        EventRecord("e2", "u2", "i2", "like", None, datetime(2024, 3, 1, tzinfo=UTC)),
    ]
    # Every column named, in another order (the fields are picked per row in C then).
    path.write_text("value,timestamp,type,item_id,user_id,id\n4.5,1709294400,rating,i1,u1,e1\n")
    assert list(read_events(path)) == [
        EventRecord("e1", "u1", "i1", "rating", 4.5, datetime(2024, 3, 1, 12, tzinfo=UTC)),
    ]


def test_items_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "items.jsonl"
    lines = [
        {"id": "a", "title": "Alpha"},
        {
            "id": 7,
            "title": "Seven",
            "text": "About seven",
            "categories": ["x", "y"],
            "properties": {"price": 3},
            "available": False,
            "expires_at": "2030-01-01T01:00:00+01:00",
        },
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    alpha, seven = read_items_jsonl(path)
    assert alpha == ItemInput("a", "Alpha")
    assert seven == ItemInput(
        "7",
        "Seven",
        "About seven",
        ["x", "y"],
        {"price": 3},
        False,
        datetime(2030, 1, 1, tzinfo=UTC),
    )


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "invalid JSON"),
        ('["a"]', "expected a JSON object"),
        ('{"id": "b"}', "title must be a non-empty string"),
        ('{"id": "b", "title": "B", "colour": "red"}', "unknown field"),
        ('{"id": "b", "title": "B", "categories": "x"}', "categories must be a list"),
        ('{"id": "b", "title": "B", "expires_at": "soon"}', "timestamp"),
        ('{"id": "", "title": "B"}', "id must not be empty"),
        ('{"id": "b/c", "title": "B"}', "id must not contain '/'"),
    ],
)
def test_bad_items_jsonl_line_names_the_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "items.jsonl"
    path.write_text('{"id": "a", "title": "A"}\n\n' + line + "\n")
    with pytest.raises(ImportFormatError, match=f"items.jsonl:3: .*{message}") as raised:
        list(read_items_jsonl(path))
    assert raised.value.line == 3
    assert isinstance(raised.value, StoreError) and isinstance(raised.value, ValueError)


def test_events_csv_and_jsonl(tmp_path: Path) -> None:
    csv_path = tmp_path / "events.csv"
    csv_path.write_text(
        "id,user_id,item_id,type,value,timestamp\n"
        "e1,u1,i1,view,,2024-03-01T12:00:00Z\n"
        'e2,u1,"i,2",rating,4.5,1709294400\n'
    )
    jsonl_path = tmp_path / "events.jsonl"
    jsonl_path.write_text(
        '{"id": "e1", "user_id": "u1", "item_id": "i1", "type": "view", '
        '"timestamp": "2024-03-01T13:00:00+01:00"}\n'
        '{"id": "e2", "user_id": "u1", "item_id": "i,2", "type": "rating", "value": 4.5, '
        '"timestamp": 1709294400}\n'
    )
    noon = datetime(2024, 3, 1, 12, tzinfo=UTC)
    expected = [
        EventRecord("e1", "u1", "i1", "view", None, noon),
        EventRecord("e2", "u1", "i,2", "rating", 4.5, noon),
    ]
    assert list(read_events(csv_path)) == expected
    assert list(read_events(jsonl_path)) == expected


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("e3,u1,i1,view,,not-a-time", "timestamp"),
        ("e3,u1,i1,view,high,2024-03-01", "could not convert"),
        ("e3,u1,,view,,2024-03-01", "missing field.*item_id"),
        ("e3,u1,i1,view,2024-03-01", "expected 6 fields"),
        # Ids every database can store: bound id lists go through SQLite's JSON functions,
        # which end a string at a NUL; PostgreSQL refuses NUL outright.
        ("e3,u\x001,i1,view,,2024-03-01", "user_id must not contain NUL"),
        ("e3,u1," + "i" * 300 + ",view,,2024-03-01", "item_id is longer than 256"),
        ("e3,u1,i1," + "t" * 65 + ",,2024-03-01", "type is longer than 64"),
        ("e3,org/u1,i1,view,,2024-03-01", "user_id must not contain '/'"),
    ],
)
def test_bad_events_csv_line_names_the_line(tmp_path: Path, row: str, message: str) -> None:
    path = tmp_path / "events.csv"
    path.write_text(
        "id,user_id,item_id,type,value,timestamp\n"
        "e1,u1,i1,view,,2024-03-01\n"
        "e2,u1,i1,view,,2024-03-01\n" + row + "\n"
    )
    with pytest.raises(ImportFormatError, match=f"events.csv:4: .*{message}"):
        list(read_events(path))


@pytest.mark.parametrize("name", ["events.csv", "events.jsonl"])
def test_bytes_that_are_not_utf8_name_their_line(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    if name.endswith(".csv"):
        lines = [b"id,user_id,item_id,type,value,timestamp"]
        lines += [f"e{n},u1,i1,view,,2024-03-01".encode() for n in range(3000)]
        lines += [b"e-bad,u\xff1,i1,view,,2024-03-01"]
    else:
        lines = [
            f'{{"id":"e{n}","user_id":"u1","item_id":"i1","type":"view",'
            f'"timestamp":"2024-03-01"}}'.encode()
            for n in range(3001)
        ]
        lines += [b'{"id":"e-bad","user_id":"u\xe91"}']
    path.write_bytes(b"\n".join(lines) + b"\n")
    # Far past the first block of text the reader decodes: the line is found again.
    with pytest.raises(ImportFormatError, match=f"{name}:3002: not UTF-8 text \\(byte 0x"):
        list(read_events(path))


def test_a_byte_order_mark_is_not_part_of_the_header(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_bytes(b"\xef\xbb\xbfid,user_id,item_id,type,timestamp\ne1,u1,i1,view,2024-03-01\n")
    assert [record.event_id for record in read_events(path)] == ["e1"]


def test_bad_events_header_and_suffix(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text("id,user,item_id,type,timestamp\n")
    with pytest.raises(ImportFormatError, match="events.csv:1: header must be"):
        list(read_events(path))
    with pytest.raises(ImportFormatError, match=r"\.csv, \.jsonl"):
        read_events(tmp_path / "events.txt")


# --- bulk writers -------------------------------------------------------------------------------


def test_tiny_movielens_import(db: Database, tiny_movielens_dirs: dict[str, Path]) -> None:
    directory = tiny_movielens_dirs["ml-latest-small"]
    assert import_items(db, movielens_items(directory), batch_size=3) == 4
    stats = import_events(db, movielens_events(directory), batch_size=2)
    assert (stats.accepted, stats.duplicates, stats.rejected) == (5, 0, 0)
    with db.read() as session:
        users = dict(session.execute(select(User.external_id, User.id)).tuples().all())
        assert stats.user_ids == set(users.values()) and set(users) == {"1", "2", "10"}
        toy = get_item(session, "1")
        assert toy.content_hash == content_hash("Toy Story (1995)", toy.text)
        events = user_events(session, users["10"])
        assert [(e.event_id, e.type, e.value) for e in events] == [("ml-10-3-0", "rating", None)]
        assert events[0].timestamp == datetime(1970, 1, 1, tzinfo=UTC)
        assert events[0].received_at.tzinfo is not None

    again = import_events(db, movielens_events(directory), batch_size=2)
    assert (again.accepted, again.duplicates, again.user_ids) == (0, 5, set())


def test_unknown_and_deleted_items_are_rejected(db: Database) -> None:
    with db.write() as session:
        bulk_upsert_items(session, [ItemInput("a", "A"), ItemInput("gone", "Gone")])
        delete_item(session, "gone")
    records = [_record("e1", "u1", "a"), _record("e2", "u2", "nope"), _record("e3", "u3", "gone")]
    with db.write() as session:
        stats = bulk_insert_events(session, records)
    assert (stats.accepted, stats.duplicates, stats.rejected) == (1, 0, 2)
    with db.read() as session:
        assert count_events(session) == 1
        # users are only created for events that could be stored
        assert session.scalars(select(User.external_id)).all() == ["u1"]


def test_partial_reimport_reports_only_new_events(db: Database) -> None:
    with db.write() as session:
        bulk_upsert_items(session, [ItemInput("a", "A"), ItemInput("b", "B")])
    first = [_record(f"e{n}", f"u{n % 3}", "a", n) for n in range(6)]
    later = [_record(f"f{n}", "u9", "b", n) for n in range(3)]
    with db.write() as session:
        bulk_insert_events(session, first)
    with db.write() as session:  # duplicates in the file itself count once
        stats = bulk_insert_events(session, first + later + later[:1], batch_size=100)
    assert (stats.accepted, stats.duplicates, stats.rejected) == (3, 7, 0)
    with db.read() as session:
        [u9] = session.scalars(select(User.id).where(User.external_id == "u9"))
        assert stats.user_ids == {u9}
        assert count_events(session) == 9


def test_import_stats_add_up() -> None:
    total = ImportStats()
    total += ImportStats(1, 2, 3, {1})
    total += ImportStats(4, 0, 1, {2})
    assert (total.accepted, total.duplicates, total.rejected, total.user_ids) == (5, 2, 4, {1, 2})
    assert total.total == 11


def test_progress_bar_is_optional(db: Database, tiny_movielens_dirs: dict[str, Path], capsys):
    directory = tiny_movielens_dirs["ml-1m"]
    with db.write() as session:
        bulk_upsert_items(session, movielens_items(directory), progress=True)
        stats = bulk_insert_events(session, movielens_events(directory), progress=True)
    assert stats.accepted == 5
    assert "importing events" in capsys.readouterr().err


@pytest.mark.slow
def test_ml_latest_small_full_import(db: Database, movielens_dir: Path) -> None:
    assert import_items(db, movielens_items(movielens_dir)) == 9742
    stats = import_events(db, movielens_events(movielens_dir))
    assert (stats.accepted, stats.duplicates, stats.rejected) == (100_836, 0, 0)
    assert len(stats.user_ids) == 610
    with db.read() as session:
        assert count_live_items(session) == 9742
        assert session.scalar(select(func.count()).select_from(User)) == 610
        assert count_events(session) == 100_836

    again = import_events(db, movielens_events(movielens_dir))
    assert (again.accepted, again.duplicates, again.user_ids) == (0, 100_836, set())
    with db.read() as session:
        assert count_events(session) == 100_836


def test_naive_event_timestamps_are_refused(db: Database) -> None:
    with db.write() as session:
        bulk_upsert_items(session, [ItemInput("a", "A")])
    naive = EventRecord("e1", "u1", "a", "view", None, datetime(2024, 1, 1))
    with pytest.raises(Exception, match="naive datetime"), db.write() as session:
        bulk_insert_events(session, [naive])
    with db.read() as session:
        assert count_events(session) == 0


def test_items_with_precomputed_vectors_are_current_and_insert_only(db: Database) -> None:
    import numpy as np

    from store.importing import import_item_vectors
    from store.items import stale_vector_ids

    items = [ItemInput(f"v{n}", f"Vector item {n}", text="t", categories=["a"]) for n in range(7)]
    vectors = np.random.default_rng(0).normal(size=(7, 4)).astype(np.float32)
    assert import_item_vectors(db, items, vectors, "m", batch_size=3) == 7
    with db.read() as session:
        assert stale_vector_ids(session, "m") == []  # no reindex re-embeds them
        item = get_item(session, "v5")
        assert item.vector_hash == item.content_hash == content_hash("Vector item 5", "t")
        assert np.array_equal(np.frombuffer(item.vector, dtype=np.float32), vectors[5])
        assert item.categories == ["a"] and item.vector_dim == 4
    # A rerun skips what is there; a count mismatch is refused.
    assert import_item_vectors(db, items, vectors, "m") == 0
    with pytest.raises(ValueError):
        import_item_vectors(db, items, vectors[:5], "m")


@pytest.mark.parametrize("split", [False, True], ids=["whole", "split"])
def test_a_user_deleted_between_batches_of_an_import_is_created_anew(
    db: Database, split: bool, request: pytest.FixtureRequest
) -> None:
    """Batch 2 names a user that batch 1 created and that was deleted since: on PostgreSQL the
    id the import remembered from batch 1 is found gone under the users' lock (by the part of
    the batch that holds the user, when batches are split)."""
    if split:
        request.getfixturevalue("split_batches")  # u1 and u4 fall in different parts
    with db.write() as session:
        bulk_upsert_items(session, [ItemInput("a", "A")])

    def records():  # type: ignore[no-untyped-def]
        yield _record("e1", "u1", "a", 1)
        yield _record("e2", "u4", "a", 2)
        with db.write() as session:  # batch 1 is committed by now
            delete_user(session, "u1")
        yield _record("e3", "u1", "a", 3)
        yield _record("e4", "u4", "a", 4)

    stats = import_events(db, records(), batch_size=2, parse_in_child=False)
    assert (stats.accepted, stats.duplicates, stats.rejected) == (4, 0, 0)
    with db.read() as session:
        ids = user_ids(session, ["u1", "u4"])
        assert [event.event_id for event in user_events(session, ids["u1"])] == ["e3"]
        assert [event.event_id for event in user_events(session, ids["u4"])] == ["e2", "e4"]


def test_a_split_keeps_each_user_whole_and_each_event_id_once() -> None:
    users = [f"u{n}" for n in range(12)]
    records = [_record(f"e{n}", users[n % 12], "a", n) for n in range(60)]
    records.insert(30, _record("e7", "u3", "a", 99))  # e7 came first with u7: left out
    parts, repeats = importing._split_by_user(EventBatch.of(records), 2)
    assert repeats == 1 and len(parts) == 2
    assert sorted(n for part in parts for n in part.event_ids) == sorted(f"e{n}" for n in range(60))
    owners = [set(part.user_ids) for part in parts]
    assert owners[0].isdisjoint(owners[1]) and owners[0] | owners[1] == set(users)
    for part in parts:  # in the batch's order
        assert [int(n[1:]) for n in part.event_ids] == sorted(int(n[1:]) for n in part.event_ids)
    e7 = next(part for part in parts if "e7" in part.event_ids)
    assert e7.user_ids[e7.event_ids.index("e7")] == "u7"


def test_a_batch_split_over_transactions_stores_what_one_would(
    db: Database, split_batches: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    with db.write() as session:
        bulk_upsert_items(session, [ItemInput("a", "A"), ItemInput("b", "B")])
    records = [_record(f"e{n}", f"u{n % 6}", "ab"[n % 2], n) for n in range(12)]
    records += [_record("e3", "u9", "a", 50), _record("x", "u1", "nope", 51)]
    transactions = []
    run_write = db.run_write
    monkeypatch.setattr(db, "run_write", lambda work: transactions.append(1) or run_write(work))

    stats = import_events(db, records, parse_in_child=False)
    assert (stats.accepted, stats.duplicates, stats.rejected) == (12, 1, 1)
    assert len(transactions) == (2 if db.dialect == "postgresql" else 1)
    with db.read() as session:
        ids = user_ids(session, [f"u{n}" for n in range(6)])
        for n in range(6):
            stored = [event.event_id for event in user_events(session, ids[f"u{n}"])]
            assert stored == [f"e{n}", f"e{n + 6}"]
    again = import_events(db, records, parse_in_child=False)
    assert (again.accepted, again.duplicates, again.rejected) == (0, 13, 1)
