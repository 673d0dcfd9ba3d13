"""One-statement reads run on a pooled DBAPI connection, past SQLAlchemy's Session and
Connection: for the statements every request runs.

A recommendation's read went through a read Session: BEGIN, the statement, COMMIT, the
Session's and Connection's bookkeeping. Measured in process on the 100k benchmark catalogue
(SQLite, median CPU a read): 0.18 ms back to back, 0.89 ms when 20 ms pass between reads;
the same statement on a pooled DBAPI cursor 0.04 and 0.35 ms. Most of the difference is the
code the Session path runs: on a server at 70% load the CPU caches are cold again at every
request (the same recommendation costs 0.8 ms back to back and 2.0-2.3 ms with 20 ms gaps,
pure Python loops do not slow down, memory-touching code does), and the less code and data a
request walks through, the less it pays for that.

One statement is its own transaction: SQLite (in autocommit mode, as driftrec's connections
are) and PostgreSQL both run it on one snapshot. Bound values pass to the driver as they are
(strings and numbers, which need no conversion); result columns get their types' result
processors (JSON decoded), as through SQLAlchemy, and the driver's errors come as
SQLAlchemy's exception classes.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError

from store.db import Database


@dataclass
class _Compiled:
    sql: str
    #: Parameter names in the order the driver wants them (qmark), or None (named/pyformat).
    positions: tuple[str, ...] | None
    defaults: dict[str, Any]
    #: The selected columns' types (empty when the statement does not say, as for text).
    types: tuple[Any, ...]
    #: From the first execution: result processors, made with the column type codes (which
    #: some, such as psycopg's for floats, need), and the row type, named as the cursor names
    #: the columns.
    processors: tuple[Any, ...] = ()
    row_type: type | None = None


class DirectRead:
    """A SELECT with the bound parameters ``names``, compiled once per dialect
    (literal-execute values such as a separator rendered in); `first` runs it on a pooled
    DBAPI connection."""

    def __init__(self, statement: Select[Any], *names: str) -> None:
        self._statement = statement
        self._names = names
        self._compiled: dict[str, _Compiled] = {}

    def first(self, db: Database, params: Mapping[str, Any]) -> Any | None:
        """The first row (attributes named as the SQL names its columns), or None."""
        rows = self._run(db, params, one=True)
        return rows[0] if rows else None

    def all(self, db: Database, params: Mapping[str, Any]) -> list[Any]:
        """Every row, as `first` gives one."""
        return self._run(db, params, one=False)

    def _run(self, db: Database, params: Mapping[str, Any], *, one: bool) -> list[Any]:
        compiled = self._compiled.get(db.dialect) or self._compile(db.engine.dialect)
        values = {**compiled.defaults, **params}
        args = (
            tuple(values[name] for name in compiled.positions)
            if compiled.positions is not None
            else values
        )
        try:
            connection = db.engine.raw_connection()
        except Exception as exc:
            _raise_wrapped(db, exc, compiled.sql, args)
            raise
        try:
            cursor = connection.cursor()
            cursor.execute(compiled.sql, args)
            if one:
                first = cursor.fetchone()
                raw = [] if first is None else [first]
            else:
                raw = cursor.fetchall()
            if compiled.row_type is None:
                self._describe(compiled, cursor.description, db.engine.dialect)
            cursor.close()
        except Exception as exc:
            # Its state (an aborted transaction on PostgreSQL) is unknown: not back to the pool.
            connection.invalidate()
            _raise_wrapped(db, exc, compiled.sql, args)
            raise
        finally:
            connection.close()  # back to the pool, which rolls back what the read opened
        row_type = compiled.row_type
        assert row_type is not None
        if not compiled.processors:
            return [row_type(*row) for row in raw]
        processors = compiled.processors
        return [
            row_type(
                *(
                    value if process is None else process(value)
                    for process, value in zip(processors, row, strict=True)
                )
            )
            for row in raw
        ]

    @staticmethod
    def _describe(compiled: _Compiled, description: Any, dialect: Dialect) -> None:
        if len(compiled.types) == len(description):
            compiled.processors = tuple(
                kind.result_processor(dialect, column[1])
                for kind, column in zip(compiled.types, description, strict=True)
            )
        compiled.row_type = namedtuple(  # type: ignore[misc]
            "DirectRow", [column[0] for column in description], rename=True
        )

    def _compile(self, dialect: Dialect) -> _Compiled:
        # render_postcompile renders literal-execute parameters (aggregate_strings' separator)
        # into the SQL text, and wants a value for every parameter to do it.
        compiled = self._statement.params(**dict.fromkeys(self._names)).compile(
            dialect=dialect, compile_kwargs={"render_postcompile": True}
        )
        defaults = {name: bind.effective_value for bind, name in compiled.bind_names.items()}
        result = _Compiled(
            sql=compiled.string,
            positions=tuple(compiled.positiontup or ()) if compiled.positional else None,
            defaults=defaults,
            types=tuple(c.type.dialect_impl(dialect) for c in self._statement.selected_columns),
        )
        self._compiled[dialect.name] = result
        return result


def _raise_wrapped(db: Database, exc: Exception, sql: str, args: Any) -> None:
    """Raise a driver's exception as SQLAlchemy's class for it (`OperationalError` for a
    database that cannot be reached), as a Session would: callers and the service's error
    handlers (503, retries) see one kind of exception either way. Returns for any other."""
    dialect = db.engine.dialect
    dbapi = dialect.loaded_dbapi
    if isinstance(exc, dbapi.Error) and not isinstance(exc, DBAPIError):
        raise DBAPIError.instance(sql, args, exc, dbapi.Error, dialect=dialect) from exc
