"""Import catalogues and event logs: MovieLens directories and driftrec's own JSONL/CSV files.

Readers stream `ItemInput`s and `EventRecord`s; bulk writers put them into the database a batch
at a time. The `driftrec import` CLI and the offline evaluation harness both use these functions.

The writers taking a `Session` never commit. `import_items` and `import_events` take a `Database`
and commit once per batch (on PostgreSQL a batch of events as two transactions, split by
user), so a killed import can simply be rerun: items are upserts and events are idempotent by
event id. Bulk import leaves profiles alone: it marks the users who got new
events as stale in each batch's transaction (`store.events.mark_profiles_stale`), and the caller
rebuilds the marked profiles (`interest.rebuild.rebuild_stale_profiles`), those a killed earlier
run left included.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import json
import logging
import math
import operator
import re
import secrets
import zlib
from collections.abc import Callable, Collection, Generator, Iterable, Iterator, Sequence, Sized
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, TextIO, TypeVar

import numpy as np
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session

from store.db import Database
from store.dialect import insert_ignoring_conflicts
from store.errors import ImportFormatError
from store.events import (
    EventColumns,
    NewEvents,
    ensure_users,
    insert_event_columns,
    lock_users,
    mark_profiles_stale,
    stored_timestamp,
)
from store.items import ItemInput, content_hash, ids_by_external, next_revision, upsert_items
from store.models import EXTERNAL_ID_LENGTH, Item
from store.read_ahead import read_ahead
from store.types import path_id_problem, refuse_naive, unstorable_text, utcnow

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

#: Events per transaction of a bulk import. Larger batches mean fewer commits and per-batch
#: user lookups (200k events on SQLite, three rounds: 10,000 39.7-40.7k events/s, 25,000
#: 42.7-43.4k, 50,000 43.0-46.0k), but a batch holds SQLite's write lock (on PostgreSQL its
#: users' row locks) for its whole transaction, ~0.35 s at 25,000 on a Zen 5 core: events
#: posted to a server meanwhile wait for it.
EVENT_BATCH_SIZE = 25_000
ITEM_BATCH_SIZE = 2_000
#: A bulk import splits each batch by user over `Database.write_lanes` transactions at once
#: (on PostgreSQL); a batch under twice this many events goes whole.
MIN_LANE_EVENTS = 1_000
USER_CHUNK = 5_000  # external ids per ensure_users call: far below bound-parameter limits
BULK_CACHE_KIB = 16_384  # SQLite page cache of an import's connection (see insert_event_batch)
EVENT_TYPE_LENGTH = 64
MOVIELENS_EVENT_TYPE = "rating"
# MovieLens' placeholders for "no genre": ml-latest / ml-25m, and ml-100k's "unknown" flag.
MOVIELENS_NO_GENRES = frozenset({"(no genres listed)", "unknown"})
ITEM_FIELDS = frozenset(
    {"id", "title", "text", "categories", "properties", "available", "expires_at"}
)
EVENT_FIELDS = ("id", "user_id", "item_id", "type", "value", "timestamp")
REQUIRED_EVENT_FIELDS = ("id", "user_id", "item_id", "type", "timestamp")


@dataclass(frozen=True, slots=True)
class EventRecord:
    """An event as read from a file, naming its user and item by their external ids."""

    event_id: str
    user_id: str
    item_id: str
    type: str
    value: float | None
    timestamp: datetime  # timezone-aware UTC


@dataclass
class ImportStats:
    """Outcome of importing events; ``user_ids`` are internal ids of users with new events."""

    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0  # unknown or deleted item, or an event type not asked for
    user_ids: set[int] = field(default_factory=set)
    #: The events one batch inserted (`insert_event_batch`); not carried over by ``+=``.
    inserted: EventColumns | None = None

    def __iadd__(self, other: ImportStats) -> ImportStats:
        self.accepted += other.accepted
        self.duplicates += other.duplicates
        self.rejected += other.rejected
        self.user_ids |= other.user_ids
        return self

    @property
    def total(self) -> int:
        return self.accepted + self.duplicates + self.rejected


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


@dataclass(slots=True)
class EventBatch:
    """A batch of events read from a file, as columns: what `insert_event_batch` takes. Made
    where the file is read (`store.read_ahead`'s child process), with the timestamps already
    in the form the database stores (`store.events.stored_timestamp`), and cheap to pickle."""

    event_ids: list[str]
    user_ids: list[str]
    item_ids: list[str]
    types: list[str]
    values: list[float | None]
    micros: np.ndarray  # int64 microseconds since the epoch, exact
    #: As `store.events.NewEvents.timestamps` holds them; None: made from ``micros`` when
    #: needed (aware datetimes pickle slowly).
    timestamps: list[Any] | None = None

    @classmethod
    def of(
        cls, records: Sequence[EventRecord], stored: Callable[[datetime], Any] | None = None
    ) -> EventBatch:
        """``records`` as columns, each timestamp ``stored(timestamp)`` when ``stored`` is
        given. A naive timestamp raises ValueError."""
        stamps = list(map(_TIMESTAMP, records))
        refuse_naive(stamps)
        return cls(
            list(map(_EVENT_ID, records)),
            list(map(_USER_ID, records)),
            list(map(_ITEM_ID, records)),
            list(map(_TYPE, records)),
            list(map(_VALUE, records)),
            np.fromiter(((stamp - _EPOCH) // _MICROSECOND for stamp in stamps), np.int64),
            None if stored is None else list(map(stored, stamps)),
        )

    def __len__(self) -> int:
        return len(self.event_ids)

    def take(self, positions: Sequence[int]) -> EventBatch:
        """The events at ``positions``, in that order."""

        def pick(column: list[Any]) -> list[Any]:
            return [column[i] for i in positions]

        return EventBatch(
            pick(self.event_ids),
            pick(self.user_ids),
            pick(self.item_ids),
            pick(self.types),
            pick(self.values),
            self.micros[list(positions)],
            None if self.timestamps is None else pick(self.timestamps),
        )

    def stored_timestamps(self) -> list[Any]:
        """The timestamps in their stored form: ``timestamps``, else aware datetimes."""
        if self.timestamps is not None:
            return self.timestamps
        return [_EPOCH + timedelta(microseconds=micros) for micros in self.micros.tolist()]


_EVENT_ID, _USER_ID, _ITEM_ID, _TYPE, _VALUE, _TIMESTAMP = (
    operator.attrgetter(name)
    for name in ("event_id", "user_id", "item_id", "type", "value", "timestamp")
)


# --- values -------------------------------------------------------------------------------------


#: A plain decimal number (epoch seconds): read as one without trying ISO 8601 first, and an
#: ISO 8601 text is parsed without a failed float() first (a raised exception per line).
_EPOCH_SECONDS = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def parse_timestamp(value: object) -> datetime:
    """ISO 8601 (naive means UTC) or epoch seconds (number or numeric string) -> aware UTC."""
    if isinstance(value, bool):
        raise ValueError(f"timestamp must be ISO 8601 or epoch seconds, got {value!r}")
    if isinstance(value, int | float):
        return _from_epoch(float(value))
    if isinstance(value, str):
        text = value.strip()
        if _EPOCH_SECONDS.fullmatch(text):
            return _from_epoch(float(text))
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            # What float() reads beyond plain numbers ("nan", "1_000", "inf") is epoch seconds
            # too, as it always was, with its own errors.
            try:
                return _from_epoch(float(text))
            except ValueError:
                pass
            raise ValueError(
                f"timestamp must be ISO 8601 or epoch seconds, got {value!r}"
            ) from None
        if parsed.tzinfo is None:
            return parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC)
    raise ValueError(f"timestamp must be ISO 8601 or epoch seconds, got {value!r}")


def _from_epoch(seconds: float) -> datetime:
    if not math.isfinite(seconds):
        raise ValueError(f"timestamp {seconds!r} is not a finite number")
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError) as exc:
        raise ValueError(f"timestamp {seconds!r} is out of range") from exc


def _path_identifier(value: object, name: str) -> str:
    """An item's or a user's id: `_identifier`, and no "/" (`store.types.path_id_problem`)."""
    text = _identifier(value, name)
    problem = path_id_problem(text)
    if problem is not None:
        raise ValueError(f"{name} {problem}")
    return text


def _identifier(value: object, name: str, max_length: int = EXTERNAL_ID_LENGTH) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"{name} must be a string, got {value!r}")
    text = str(value)
    if not text:
        raise ValueError(f"{name} must not be empty")
    if len(text) > max_length:
        raise ValueError(f"{name} is longer than {max_length} characters")
    problem = unstorable_text(text)
    if problem is not None:
        raise ValueError(f"{name} {problem[1]}")
    return text


def _optional_float(value: object, name: str) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{name} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return number


def _string_list(value: object, name: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{name} must be a list of strings")
    return list(value)


# --- line-oriented reading ----------------------------------------------------------------------


def _parse_lines(
    path: Path, lines: Iterable[tuple[int, T]], parse: Callable[[T], R]
) -> Iterator[R]:
    """Apply ``parse`` to numbered lines; a bad line raises `ImportFormatError` naming it."""
    for number, raw in lines:
        try:
            parsed = parse(raw)
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            raise ImportFormatError(path, number, str(exc) or type(exc).__name__) from exc
        yield parsed


#: driftrec's own files and MovieLens' CSV files: UTF-8, with or without a byte order mark
#: (spreadsheets write one).
TEXT_ENCODING = "utf-8-sig"


def _text_lines(path: Path, encoding: str = TEXT_ENCODING) -> Iterator[tuple[int, str]]:
    """Numbered non-blank lines without their line ending."""
    with _decoded(path, encoding) as handle:
        for number, line in enumerate(handle, start=1):
            line = line.rstrip("\r\n")
            if line.strip():
                yield number, line


@contextlib.contextmanager
def _decoded(path: Path, encoding: str) -> Iterator[TextIO]:
    """``path`` open as text; bytes that are not ``encoding`` raise `ImportFormatError` naming
    their line (found again by reading the file's lines as bytes: text is decoded a block of
    lines at a time)."""
    with open(path, encoding=encoding, newline="") as handle:
        try:
            yield handle
        except UnicodeDecodeError as exc:
            bad = exc.object[exc.start : exc.start + 1].hex()
            name = "UTF-8" if codecs.lookup(encoding).name.startswith("utf-8") else encoding
            raise ImportFormatError(
                path, _first_undecodable_line(path, encoding), f"not {name} text (byte 0x{bad})"
            ) from None


def _first_undecodable_line(path: Path, encoding: str) -> int | None:
    decoder = codecs.getincrementaldecoder(encoding)()
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                decoder.decode(line)
            except UnicodeDecodeError:
                return number
    return None


def _csv_rows(
    path: Path, required: Sequence[str], optional: Sequence[str] = (), encoding: str = TEXT_ENCODING
) -> Iterator[tuple[int, dict[str, str]]]:
    """Numbered rows of a CSV file with a header that names ``required`` (+ ``optional``)."""
    for number, header, row in _csv_lines(path, required, optional, encoding):
        yield number, dict(zip(header, row, strict=True))


def _csv_fields(
    path: Path, fields: Sequence[str], optional: Sequence[str] = ()
) -> Iterator[tuple[int, Sequence[str | None]]]:
    """Numbered rows of a CSV file as sequences of its values in the order of ``fields`` (the
    required ones, then ``optional``), None for an optional column the header lacks."""
    order: list[int | None] | None = None
    pick: Callable[[list[str]], Sequence[str]] | None = None
    for number, header, row in _csv_lines(path, fields, optional):
        if order is None:
            where = {name: position for position, name in enumerate(header)}
            order = [where.get(name) for name in (*fields, *optional)]
            # The header names every field: reordered in C (a list built per row in Python
            # was 4% of a bulk import's time).
            if len(order) > 1 and None not in order:
                pick = operator.itemgetter(*order)
        yield (
            number,
            pick(row) if pick is not None else [None if i is None else row[i] for i in order],
        )


def _csv_lines(
    path: Path, required: Sequence[str], optional: Sequence[str] = (), encoding: str = TEXT_ENCODING
) -> Iterator[tuple[int, list[str], list[str]]]:
    """(line number, header, values) of each row of a CSV file whose header names
    ``required`` (+ ``optional``)."""
    with _decoded(path, encoding) as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise ImportFormatError(path, 1, "empty file: expected a header line")
        missing = [name for name in required if name not in header]
        unknown = [name for name in header if name not in (*required, *optional)]
        if missing or unknown:
            expected = ",".join((*required, *optional))
            raise ImportFormatError(path, 1, f"header must be {expected}, got {','.join(header)}")
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                raise ImportFormatError(
                    path, reader.line_num, f"expected {len(header)} fields, got {len(row)}"
                )
            yield reader.line_num, header, row


def _json_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, line in _text_lines(path):
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise ImportFormatError(path, number, f"invalid JSON: {exc}") from exc
        if not isinstance(obj, dict):
            raise ImportFormatError(path, number, "expected a JSON object")
        yield number, obj


# --- driftrec's own formats ---------------------------------------------------------------------


def read_items_jsonl(path: str | Path) -> Iterator[ItemInput]:
    """Items from JSONL: id, title, and optionally text, categories, properties, available,
    expires_at (ISO 8601 or epoch seconds)."""
    path = Path(path)
    return _parse_lines(path, _json_lines(path), _item_from_json)


def _item_from_json(obj: dict[str, Any]) -> ItemInput:
    unknown = sorted(set(obj) - ITEM_FIELDS)
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)}")
    title = obj.get("title")
    if not isinstance(title, str) or not title.strip():
        raise ValueError("title must be a non-empty string")
    text = obj.get("text")
    if text is not None and not isinstance(text, str):
        raise ValueError("text must be a string")
    properties = obj.get("properties") or {}
    if not isinstance(properties, dict):
        raise ValueError("properties must be an object")
    available = obj.get("available", True)
    if not isinstance(available, bool):
        raise ValueError("available must be true or false")
    expires_at = obj.get("expires_at")
    return ItemInput(
        external_id=_path_identifier(obj.get("id"), "id"),
        title=title,
        text=text,
        categories=_string_list(obj.get("categories"), "categories"),
        properties=properties,
        available=available,
        expires_at=None if expires_at is None else parse_timestamp(expires_at),
    )


def read_events(path: str | Path) -> Iterator[EventRecord]:
    """Events from a ``.csv`` or ``.jsonl`` / ``.ndjson`` file (fields: EVENT_FIELDS)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return read_events_csv(path)
    if suffix in (".jsonl", ".ndjson"):
        return read_events_jsonl(path)
    raise ImportFormatError(path, None, "events file must end in .csv, .jsonl or .ndjson")


def read_events_csv(path: str | Path) -> Iterator[EventRecord]:
    path = Path(path)
    rows = _csv_fields(path, REQUIRED_EVENT_FIELDS, optional=_OPTIONAL_EVENT_FIELDS)
    return _parse_lines(path, rows, _event_from_csv)


_OPTIONAL_EVENT_FIELDS = tuple(name for name in EVENT_FIELDS if name not in REQUIRED_EVENT_FIELDS)
_CSV_EVENT_FIELDS = (*REQUIRED_EVENT_FIELDS, *_OPTIONAL_EVENT_FIELDS)


def _event_from_csv(row: Sequence[str | None]) -> EventRecord:
    """An event from a CSV row in ``_CSV_EVENT_FIELDS`` order: what `_event_from_mapping`
    makes of it, without its per-field checks where the values plainly pass them (the header
    was checked, so no field is unknown; text decoded as UTF-8 holds no lone surrogate)."""
    event_id, user_id, item_id, event_type, timestamp, value = row
    if (
        event_id
        and user_id
        and item_id
        and event_type
        and timestamp
        and max(len(event_id), len(user_id), len(item_id)) <= EXTERNAL_ID_LENGTH
        and len(event_type) <= EVENT_TYPE_LENGTH
        and "\x00" not in f"{event_id}{user_id}{item_id}{event_type}"
        and "/" not in user_id
    ):
        return EventRecord(
            event_id,
            user_id,
            item_id,
            event_type,
            _optional_float(value, "value"),
            parse_timestamp(timestamp),
        )
    # Something to report: the general path's checks, in its order, with its messages.
    return _event_from_mapping(
        {name: v for name, v in zip(_CSV_EVENT_FIELDS, row, strict=True) if v is not None}
    )


def read_events_jsonl(path: str | Path) -> Iterator[EventRecord]:
    path = Path(path)
    return _parse_lines(path, _json_lines(path), _event_from_mapping)


def _event_from_mapping(obj: dict[str, Any]) -> EventRecord:
    unknown = sorted(set(obj) - set(EVENT_FIELDS))
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)}")
    missing = [name for name in REQUIRED_EVENT_FIELDS if obj.get(name) in (None, "")]
    if missing:
        raise ValueError(f"missing field(s) {', '.join(missing)}")
    return EventRecord(
        event_id=_identifier(obj["id"], "id"),
        user_id=_path_identifier(obj["user_id"], "user_id"),
        item_id=_identifier(obj["item_id"], "item_id"),
        type=_identifier(obj["type"], "type", EVENT_TYPE_LENGTH),
        value=_optional_float(obj.get("value"), "value"),
        timestamp=parse_timestamp(obj["timestamp"]),
    )


# --- MovieLens ----------------------------------------------------------------------------------

# Files that identify each layout: ml-latest(-small) / ml-20m / ml-25m, ml-100k, ml-1m.
MOVIELENS_LAYOUTS: dict[str, tuple[str, str]] = {
    "csv": ("movies.csv", "ratings.csv"),
    "100k": ("u.item", "u.data"),
    "1m": ("movies.dat", "ratings.dat"),
}


def detect_movielens_format(directory: str | Path) -> str:
    """One of MOVIELENS_LAYOUTS' keys, from the files present in ``directory``."""
    directory = Path(directory)
    for name, files in MOVIELENS_LAYOUTS.items():
        if all((directory / file).is_file() for file in files):
            return name
    raise ImportFormatError(
        directory,
        None,
        "not a MovieLens directory: expected movies.csv + ratings.csv (ml-latest, ml-25m), "
        "u.item + u.data (ml-100k) or movies.dat + ratings.dat (ml-1m)",
    )


def movielens_items(directory: str | Path, *, include_tags: bool = False) -> Iterator[ItemInput]:
    """One item per movie: title as given, text "Genres: a, b" (+ ". Tags: x, y")."""
    directory = Path(directory)
    layout = detect_movielens_format(directory)
    tags = _movielens_tags(directory / "tags.csv") if include_tags else {}
    movies = {"csv": _csv_movies, "100k": _100k_movies, "1m": _1m_movies}[layout](directory)
    for movie_id, title, genres in movies:
        yield _movie_item(movie_id, title, genres, tags.get(movie_id, ()))


def movielens_events(directory: str | Path) -> Iterator[EventRecord]:
    """One "rating" event per rating; the rating value itself is not kept (value None)."""
    directory = Path(directory)
    layout = detect_movielens_format(directory)
    if layout == "csv":
        path = directory / "ratings.csv"
        rows = _csv_rows(path, ("userId", "movieId", "rating", "timestamp"))
        return _parse_lines(
            path, rows, lambda row: _rating(row["userId"], row["movieId"], row["timestamp"])
        )
    path, separator = (
        (directory / "u.data", "\t") if layout == "100k" else (directory / "ratings.dat", "::")
    )
    return _parse_lines(path, _text_lines(path, "latin-1"), partial(_split_rating, separator))


def _rating(user: str, movie: str, timestamp: str) -> EventRecord:
    user, movie, timestamp = user.strip(), movie.strip(), timestamp.strip()
    if not user or not movie:
        raise ValueError("user and movie ids must not be empty")
    return EventRecord(
        event_id=f"ml-{user}-{movie}-{timestamp}",
        user_id=user,
        item_id=movie,
        type=MOVIELENS_EVENT_TYPE,
        value=None,
        timestamp=_from_epoch(int(timestamp)),
    )


def _split_rating(separator: str, line: str) -> EventRecord:
    parts = line.split(separator)
    if len(parts) != 4:
        raise ValueError(f"expected 4 {separator!r}-separated fields, got {len(parts)}")
    return _rating(parts[0], parts[1], parts[3])


def _movie_item(movie_id: str, title: str, genres: list[str], tags: Sequence[str]) -> ItemInput:
    parts = []
    if genres:
        parts.append("Genres: " + ", ".join(genres))
    if tags:
        parts.append("Tags: " + ", ".join(tags))
    return ItemInput(
        external_id=movie_id, title=title, text=". ".join(parts) or None, categories=genres
    )


def _genres(names: Iterable[str]) -> list[str]:
    return [name for name in (n.strip() for n in names) if name and name not in MOVIELENS_NO_GENRES]


def _movie(movie_id: str, title: str, genres: list[str]) -> tuple[str, str, list[str]]:
    movie_id, title = movie_id.strip(), title.strip()
    if not movie_id or not title:
        raise ValueError("movie id and title must not be empty")
    return movie_id, title, genres


def _csv_movies(directory: Path) -> Iterator[tuple[str, str, list[str]]]:
    path = directory / "movies.csv"
    rows = _csv_rows(path, ("movieId", "title", "genres"))
    return _parse_lines(
        path,
        rows,
        lambda row: _movie(row["movieId"], row["title"], _genres(row["genres"].split("|"))),
    )


def _1m_movies(directory: Path) -> Iterator[tuple[str, str, list[str]]]:
    def parse(line: str) -> tuple[str, str, list[str]]:
        parts = line.split("::")
        if len(parts) < 3:
            raise ValueError(f"expected MovieID::Title::Genres, got {line!r}")
        return _movie(parts[0], "::".join(parts[1:-1]), _genres(parts[-1].split("|")))

    path = directory / "movies.dat"
    return _parse_lines(path, _text_lines(path, "latin-1"), parse)


def _100k_movies(directory: Path) -> Iterator[tuple[str, str, list[str]]]:
    genre_path = directory / "u.genre"
    if not genre_path.is_file():
        raise ImportFormatError(directory, None, "ml-100k directory lacks u.genre")
    # u.genre lines are "name|index"; the flags in u.item follow the index order.
    indexed = list(_parse_lines(genre_path, _text_lines(genre_path, "latin-1"), _genre_entry))
    names = [name for _, name in sorted(indexed)]

    def parse(line: str) -> tuple[str, str, list[str]]:
        parts = line.split("|")
        if len(parts) != 5 + len(names):
            raise ValueError(f"expected {5 + len(names)} '|'-separated fields, got {len(parts)}")
        flags = parts[5:]
        if any(flag not in ("0", "1") for flag in flags):
            raise ValueError("genre flags must be 0 or 1")
        return _movie(
            parts[0], parts[1], _genres(n for n, f in zip(names, flags, strict=True) if f == "1")
        )

    path = directory / "u.item"
    return _parse_lines(path, _text_lines(path, "latin-1"), parse)


def _genre_entry(line: str) -> tuple[int, str]:
    name, index = line.rsplit("|", 1)
    return int(index), name


def _movielens_tags(path: Path) -> dict[str, list[str]]:
    """Distinct tags per movie (case-insensitively), in order of first appearance."""
    if not path.is_file():
        return {}
    tags: dict[str, dict[str, str]] = {}
    for _, row in _csv_rows(path, ("userId", "movieId", "tag", "timestamp")):
        tag = row["tag"].strip()
        if tag:
            tags.setdefault(row["movieId"].strip(), {}).setdefault(tag.casefold(), tag)
    return {movie_id: list(seen.values()) for movie_id, seen in tags.items()}


# --- bulk writers -------------------------------------------------------------------------------


def batched(iterable: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of ``size`` elements (the last one shorter)."""
    if size < 1:
        raise ValueError("batch size must be at least 1")
    batch: list[T] = []
    for element in iterable:
        batch.append(element)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _progress(iterable: Iterable[T], enabled: bool, unit: str) -> Iterable[T]:
    if not enabled:
        return iterable
    from tqdm import tqdm  # optional presentation only: imported when progress is asked for

    return tqdm(iterable, unit=unit, unit_scale=True, desc=f"importing {unit}s")


def upsert_item_batch(session: Session, items: Sequence[ItemInput]) -> int:
    """Upsert one batch (see `store.items.upsert_items`); return how many distinct items."""
    return len(upsert_items(session, items))


def bulk_upsert_items(
    session: Session,
    items: Iterable[ItemInput],
    *,
    batch_size: int = ITEM_BATCH_SIZE,
    progress: bool = False,
) -> int:
    """Upsert every item in the caller's transaction; return the number written."""
    count = 0
    for batch in batched(_progress(items, progress, "item"), batch_size):
        count += upsert_item_batch(session, batch)
    log.info("items imported count=%d", count)
    return count


def insert_event_batch(
    session: Session,
    events: EventBatch,
    *,
    import_id: str,
    batch: int = 0,
    item_cache: dict[str, int] | None = None,
    user_cache: dict[str, int] | None = None,
    event_types: Collection[str] | None = None,
) -> ImportStats:
    """Insert one batch of events, skipping stored event ids and rejecting unknown items (and,
    given ``event_types``, events of other types); mark the users who got events as stale
    under ``import_id`` from its ``batch`` (the batch's number in the import) in the same
    transaction (`store.events.mark_profiles_stale`).

    Through `store.events.insert_event_columns` (idempotent by event id, ``received_at`` now,
    one set-based statement per batch). ``item_cache`` (external -> internal id of live items)
    carries item lookups over from earlier batches of the same import: an item deleted
    meanwhile is treated as if deleted after the import. ``user_cache`` does the same for
    users (external -> internal id) on PostgreSQL. ``ImportStats.inserted`` holds the events
    inserted.
    """
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        # 16 MiB of page cache instead of 2 for this (job's) connection: inserts into the events
        # table's indexes stop re-reading pages (200k events: 45-55k -> 60-68k events/s). Not
        # for servers: with two writing processes each transaction starts by dropping the
        # cache, and a larger one cost single events ~5% there.
        session.connection().exec_driver_sql(f"PRAGMA cache_size=-{BULK_CACHE_KIB}")
    items = _through_cache(ids_by_external, session, set(events.item_ids), item_cache)
    known = [
        position
        for position, (item, kind) in enumerate(zip(events.item_ids, events.types, strict=True))
        if item in items and (event_types is None or kind in event_types)
    ]
    received = len(events)
    if len(known) < received:
        events = events.take(known)
    if dialect == "postgresql":
        # Users from earlier batches are taken from ``user_cache``: the lock below finds any
        # that no longer exist. (SQLite has no such check here: a cached user deleted since
        # would fail the events' foreign key.)
        wanted = set(events.user_ids)
        cached = _through_cache(_ensure_users, session, wanted, user_cache)
        users = {external: cached[external] for external in wanted}
        # Before the insert: a profile rebuild of these users (which takes the same locks)
        # then either finishes first or starts after this batch committed, never reads it
        # half-way. (A SQLite write transaction excludes every other writer already.)
        live = lock_users(session, users.values())
        # Users deleted (or merged away) since they were looked up are created anew, as an
        # event for an unknown user does.
        gone = {external for external, user_id in users.items() if user_id not in live}
        if gone:
            users.update(_ensure_users(session, gone))
            lock_users(session, [users[external] for external in gone])
            if user_cache is not None:
                user_cache.update(users)
    else:
        users = _ensure_users(session, set(events.user_ids))
    user_ids = list(map(users.__getitem__, events.user_ids))
    item_ids = list(map(items.__getitem__, events.item_ids))
    inserted = insert_event_columns(
        session,
        NewEvents(
            events.event_ids,
            user_ids,
            item_ids,
            events.types,
            events.values,
            events.stored_timestamps(),
        ),
    )
    fresh = _first_inserted(events.event_ids, inserted)
    columns = EventColumns(
        np.array(user_ids, dtype=np.int64),
        np.array(item_ids, dtype=np.int64),
        events.types,
        events.values,
        events.micros / 1e6,  # as datetime.timestamp() computes it: exact to the microsecond
    )
    if fresh is not None:
        columns = columns.take(np.array(fresh, dtype=np.int64))
    inserted_users = set(columns.user_ids.tolist())
    mark_profiles_stale(session, inserted_users, import_id, batch)
    return ImportStats(
        accepted=len(inserted),
        duplicates=len(events) - len(inserted),
        rejected=received - len(events),
        user_ids=inserted_users,
        inserted=columns,
    )


def _first_inserted(event_ids: Sequence[str], inserted: set[str]) -> list[int] | None:
    """Positions of the events inserted (an event id repeated within the batch is inserted
    once, as its first row; the repeats count as duplicates); None when all were."""
    if len(inserted) == len(event_ids):
        return None  # as many distinct ids inserted as rows: every row, no repeats
    fresh, taken = [], set()
    for position, event_id in enumerate(event_ids):
        if event_id in inserted and event_id not in taken:
            taken.add(event_id)
            fresh.append(position)
    return fresh


def _through_cache(
    lookup: Callable[[Session, set[str]], dict[str, int]],
    session: Session,
    external_ids: set[str],
    cache: dict[str, int] | None,
) -> dict[str, int]:
    """``lookup(session, external_ids)`` (external -> internal ids), asking it only for the ids
    ``cache`` lacks when a cache is given: then the whole cache is returned."""
    if cache is None:
        return lookup(session, external_ids)
    missing = external_ids.difference(cache)
    if missing:
        cache.update(lookup(session, missing))
    return cache


def _ensure_users(session: Session, external_ids: set[str]) -> dict[str, int]:
    wanted = sorted(external_ids)
    result: dict[str, int] = {}
    for start in range(0, len(wanted), USER_CHUNK):
        result.update(ensure_users(session, wanted[start : start + USER_CHUNK]))
    return result


def bulk_insert_events(
    session: Session,
    records: Iterable[EventRecord],
    *,
    batch_size: int = EVENT_BATCH_SIZE,
    progress: bool = False,
) -> ImportStats:
    """Insert every event in the caller's transaction (idempotent by event id); the users'
    profiles are left marked stale for `interest.rebuild.rebuild_stale_profiles`."""
    stats, item_cache, import_id = ImportStats(), {}, new_import_id()
    stored = _stored_in_process(session.get_bind().dialect)
    batches = batched(_progress(records, progress, "event"), batch_size)
    for number, batch in enumerate(batches):
        stats += insert_event_batch(
            session,
            EventBatch.of(batch, stored),
            import_id=import_id,
            batch=number,
            item_cache=item_cache,
        )
    _log_events(stats)
    return stats


def import_items(
    database: Database,
    items: Iterable[ItemInput],
    *,
    batch_size: int = ITEM_BATCH_SIZE,
    progress: bool = False,
) -> int:
    """Upsert items committing once per batch: an interrupted import can be rerun."""
    count = 0
    for batch in batched(_progress(items, progress, "item"), batch_size):
        count += database.run_write(partial(upsert_item_batch, items=batch))
    log.info("items imported count=%d", count)
    return count


def import_events(
    database: Database,
    records: Iterable[EventRecord],
    *,
    batch_size: int = EVENT_BATCH_SIZE,
    progress: bool = False,
    import_id: str | None = None,
    event_types: Collection[str] | None = None,
    on_commit: Callable[[EventColumns, int], None] | None = None,
    parse_in_child: bool = True,
) -> ImportStats:
    """Insert events committing once per batch: an interrupted import can be rerun. On
    PostgreSQL a batch goes as `Database.write_lanes` transactions at once, its users split between
    them (`_write_batch`), each committing on its own.

    With ``parse_in_child`` ``records`` is iterated in a child process (`store.read_ahead`)
    while the previous batch is written, unless it is a collection of at most one batch: the
    caller must not iterate it meanwhile, and iterating it must not depend on the batches
    written so far. Each batch marks its users stale under ``import_id`` (a new one by
    default); ``on_commit`` gets the events each batch (or part of one) inserted and the
    batch's number once it committed (to fold them into the profiles).
    """
    import_id = import_id or new_import_id()
    lanes = database.write_lanes
    stats, item_cache, user_cache = ImportStats(), {}, {}
    chunks = batched(records, batch_size)
    batches: Generator[EventBatch, None, None]
    if not parse_in_child or (isinstance(records, Sized) and len(records) <= batch_size):
        # Nothing to overlap: no child process.
        in_process = _stored_in_process(database.engine.dialect)
        batches = (EventBatch.of(chunk, in_process) for chunk in chunks)
    else:
        to_send = stored_timestamp(database.engine.dialect)  # None: datetimes pickle slowly
        batches = read_ahead(chunks, partial(EventBatch.of, stored=to_send))
    # Closed on the way out, an error included: the child reading ahead stops at once.
    with (
        contextlib.closing(batches),
        contextlib.closing(_batch_progress(batches, progress)) as counted,
    ):
        for number, batch in enumerate(counted):
            work = partial(
                insert_event_batch,
                import_id=import_id,
                batch=number,
                item_cache=item_cache,
                user_cache=user_cache,
                event_types=event_types,
            )
            committed, error = _write_batch(database, work, batch, lanes)
            for part in committed:
                if on_commit is not None and part.inserted is not None and len(part.inserted):
                    on_commit(part.inserted, number)
                stats += part
            if error is not None:
                raise error
    _log_events(stats)
    return stats


def _write_batch(
    database: Database, work: Callable[..., ImportStats], batch: EventBatch, lanes: int
) -> tuple[list[ImportStats], BaseException | None]:
    """``work(session, events=...)`` on ``batch`` in one transaction, or split by user over
    ``lanes`` transactions run at once, each in a thread of its own with its own connection:
    the users each locks (`lock_users`) and the event ids each inserts never meet. Returns the
    outcomes of the transactions that committed and the error of one that did not, if any:
    the others committed all the same, and their events are for the caller to fold before it
    raises that error."""
    if lanes == 1 or len(batch) < 2 * MIN_LANE_EVENTS:
        return [database.run_write(partial(work, events=batch))], None
    parts, repeats = _split_by_user(batch, lanes)
    with ThreadPoolExecutor(len(parts), thread_name_prefix="import-lane") as pool:
        futures = [pool.submit(database.run_write, partial(work, events=part)) for part in parts]
    committed, error = [ImportStats(duplicates=repeats)], None
    for future in futures:
        if (failed := future.exception()) is None:
            committed.append(future.result())
        else:
            error = error or failed
    return committed, error


def _split_by_user(batch: EventBatch, parts: int) -> tuple[list[EventBatch], int]:
    """``batch`` as up to ``parts`` batches, all of a user's events in one (the same part in
    every batch), and the count of rows left out, as duplicates, because their event id came
    earlier in the batch: the first row of an id is the one stored, as in one transaction,
    and no two parts insert the same id."""
    seen: set[str] = set()
    positions: list[list[int]] = [[] for _ in range(parts)]
    for position, (event_id, user) in enumerate(zip(batch.event_ids, batch.user_ids, strict=True)):
        if event_id not in seen:
            seen.add(event_id)
            positions[zlib.crc32(user.encode()) % parts].append(position)
    return [batch.take(part) for part in positions if part], len(batch) - len(seen)


def _stored_in_process(dialect: Dialect) -> Callable[[datetime], Any]:
    """`store.events.stored_timestamp`, or the datetime as it is where the driver takes it:
    within one process there is no pickling to spare."""
    return stored_timestamp(dialect) or _same


def _same(value: T) -> T:
    return value


def _batch_progress(batches: Iterable[EventBatch], enabled: bool) -> Iterator[EventBatch]:
    """``batches``, counted on a progress bar of events when ``enabled``."""
    if not enabled:
        yield from batches
        return
    from tqdm import tqdm  # optional presentation only: imported when progress is asked for

    with tqdm(unit="event", unit_scale=True, desc="importing events") as bar:
        for batch in batches:
            yield batch
            bar.update(len(batch))


def new_import_id() -> str:
    """A fresh id for one run of an import (see `store.models.StaleProfile`)."""
    return secrets.token_hex(16)


def _log_events(stats: ImportStats) -> None:
    log.info(
        "events imported accepted=%d duplicates=%d rejected=%d users=%d",
        stats.accepted,
        stats.duplicates,
        stats.rejected,
        len(stats.user_ids),
    )


# --- items with precomputed vectors -------------------------------------------------------------


def insert_items_with_vectors(
    session: Session,
    items: Sequence[ItemInput],
    vectors: Any,
    model: str,
    *,
    revision: int | None = None,
) -> int:
    """Insert new items together with vectors made elsewhere; return how many were inserted.

    ``vectors`` holds one float32 row per item, from the embedder named ``model``: each vector is
    recorded as made from the item's current text (content hash), so no reindex re-embeds it.
    Items whose external id is already stored are left alone (insert-only: rerunning an
    interrupted load skips what is there). One catalogue revision covers the whole batch.
    """
    if len(items) != len(vectors):
        raise ValueError(f"{len(items)} items but {len(vectors)} vectors")
    if not items:
        return 0
    dim = int(vectors.shape[1])
    revision = next_revision(session) if revision is None else revision
    now = utcnow()
    rows = []
    for item, vector in zip(items, vectors, strict=True):
        digest = content_hash(item.title, item.text)
        rows.append(
            {
                "external_id": item.external_id,
                "title": item.title,
                "text": item.text,
                "categories": list(item.categories),
                "properties": dict(item.properties),
                "available": item.available,
                "expires_at": item.expires_at,
                "content_hash": digest,
                "vector": vector.astype("<f4", copy=False).tobytes(),
                "vector_dim": dim,
                "vector_model": model,
                "vector_hash": digest,
                "created_at": now,
                "updated_at": now,
                "revision": revision,
            }
        )
    inserted = insert_ignoring_conflicts(
        session, Item.__table__, rows, "external_id", returning=("id",)
    )
    return len(inserted)


def import_item_vectors(
    database: Database,
    items: Iterable[ItemInput],
    vectors: Any,
    model: str,
    *,
    batch_size: int = ITEM_BATCH_SIZE * 5,
    progress: bool = False,
) -> int:
    """Insert items with precomputed vectors (row i of ``vectors`` for the i-th item), committing
    once per batch; an interrupted load can be rerun. ``vectors`` may be a memory-mapped array."""
    count, start = 0, 0
    for batch in batched(_progress(items, progress, "item"), batch_size):
        rows = vectors[start : start + len(batch)]
        if len(rows) != len(batch):
            raise ValueError(f"fewer vectors ({start + len(rows)}) than items")
        count += database.run_write(
            partial(insert_items_with_vectors, items=batch, vectors=rows, model=model)
        )
        start += len(batch)
    if start != len(vectors):
        raise ValueError(f"{len(vectors)} vectors but {start} items")
    log.info("items with vectors imported count=%d", count)
    return count
