"""Column types shared by the models."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from sqlalchemy import DateTime
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend.

    PostgreSQL keeps the zone (``timestamptz``); SQLite stores text without one, so values are
    converted to UTC on the way in and marked UTC on the way out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = require_aware(value).astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def require_aware(value: datetime) -> datetime:
    """``value``, or ValueError when it is naive (no zone: its instant is unknown)."""
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: driftrec stores timezone-aware UTC only")
    return value


def refuse_naive(values: Iterable[datetime]) -> None:
    """`require_aware`'s ValueError for the first naive datetime of ``values``, if any."""
    naive = next((value for value in values if value.tzinfo is None), None)
    if naive is not None:
        require_aware(naive)


def utcnow() -> datetime:
    return datetime.now(UTC)


@functools.cache  # one probe per dialect instance
def utc_bind_processor(dialect: Dialect) -> Callable[[datetime | None], Any]:
    """`UTCDateTime`'s bind processing on ``dialect``, through a faster path when it gives the
    same value: SQLAlchemy formats SQLite datetimes field by field, ``isoformat`` writes the
    same text in C. A probe compares both, so a changed storage format falls back to the
    column type's own processing."""
    # A TypeDecorator with process_bind_param always has a processor.
    official = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)
    assert official is not None
    if dialect.name != "sqlite":
        return official

    def fast(value: datetime | None) -> Any:
        if value is None or value.tzinfo is None:
            return official(value)  # raises the column type's own error for a naive one
        if value.tzinfo is not UTC:
            value = value.astimezone(UTC)
        return value.isoformat(" ", "microseconds")[:26]  # without its "+00:00"

    probes = (
        datetime(2001, 2, 3, 4, 5, 6, 7, tzinfo=timezone(timedelta(hours=-3))),
        datetime(999, 12, 31, 23, 59, 59, tzinfo=UTC),
    )
    return fast if all(fast(probe) == official(probe) for probe in probes) else official


def path_id_problem(value: str) -> str | None:
    """Why ``value`` cannot be an item's or a user's id, or None: a "/" (URL paths name items
    and users, and servers decode an escaped one, %2F, into a separator before routing)."""
    return "must not contain '/' (URL paths name items and users)" if "/" in value else None


def unstorable_text(value: str) -> tuple[str, str] | None:
    """Why every database cannot store ``value`` as text, as (code, message), or None: a NUL
    character (PostgreSQL refuses it; SQLite's JSON functions, which bound id lists go
    through, end the string there) or a lone surrogate (not encodable as UTF-8)."""
    if "\x00" in value:
        return "nul_character", "must not contain NUL characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "not_unicode", "is not valid Unicode text"
    return None
