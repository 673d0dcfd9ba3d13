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
are) and PostgreSQL both run it on one snapshot. On PostgreSQL the connection is switched to
autocommit for the statement: psycopg otherwise sends BEGIN first and the pool a ROLLBACK when
the connection goes back, each a round trip (with them, 16% of a server worker's samples under
closed-loop recommendations on PostgreSQL at 100k items, py-spy). Bound values pass to the
driver as they are (strings and numbers, which need no conversion); result columns get their
types' result processors (JSON decoded), as through SQLAlchemy, and the driver's errors come
as SQLAlchemy's exception classes.

Inside a transaction (event ingestion's write transaction) the same statements run on the
Session's own DBAPI connection (`DirectRead.all_in`, `DirectWrite`): the Session still begins,
commits and rolls back, and run_write still retries what SQLAlchemy's errors say is transient;
only the per-statement work is skipped. A single event's five statements cost ~1 ms of CPU
through SQLAlchemy's Connection against ~0.4 ms on the cursor (cProfile, SQLite).
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from sqlalchemy import CompoundSelect, Executable, Select
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from store.db import Database
from store.types import UTCDateTime, utc_bind_processor


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
    """A SELECT (or a UNION of them) with the bound parameters ``names``, compiled once per
    dialect (literal-execute values such as a separator rendered in); `first` runs it on a
    pooled DBAPI connection.

    ``binary``: on PostgreSQL the rows come in the binary format, for statements that read
    bytea columns (profiles, vectors). In the text format the server writes a bytea as hex
    and psycopg parses it back: 2,000 profile rows of 18 KB took 331-337 ms that way against
    105-134 ms in binary (one client, the Zen 3 VM of 2026-12-01). Only for statements whose
    columns all have a binary loader in psycopg (one without would come as bytes).
    """

    def __init__(
        self, statement: Select[Any] | CompoundSelect, *names: str, binary: bool = False
    ) -> None:
        self._statement = statement
        self._names = names
        self._binary = binary
        self._compiled: dict[str, _Compiled] = {}

    def first(self, db: Database, params: Mapping[str, Any]) -> Any | None:
        """The first row (attributes named as the SQL names its columns), or None."""
        rows = self._run(db, params, one=True)
        return rows[0] if rows else None

    def all(self, db: Database, params: Mapping[str, Any]) -> list[Any]:
        """Every row, as `first` gives one."""
        return self._run(db, params, one=False)

    def all_in(self, session: Session, params: Mapping[str, Any]) -> list[Any]:
        """Every row, as `all` gives them, read inside the Session's transaction on its own
        connection (a write transaction's reads: ``FOR UPDATE`` locks, its own writes)."""
        dialect = session.get_bind().dialect
        compiled = self._compiled.get(dialect.name) or self._compile(dialect)
        args = _arguments(compiled, params)
        options = self._cursor_options(dialect.name)
        with _session_cursor(session, compiled.sql, args, **options) as cursor:
            cursor.execute(compiled.sql, args)
            raw = cursor.fetchall()
            if compiled.row_type is None:
                self._describe(compiled, cursor.description, dialect)
        return _convert(compiled, raw)

    def _run(self, db: Database, params: Mapping[str, Any], *, one: bool) -> list[Any]:
        compiled = self._compiled.get(db.dialect) or self._compile(db.engine.dialect)
        args = _arguments(compiled, params)
        with _statement_alone(db, compiled.sql, args, **self._cursor_options(db.dialect)) as cursor:
            cursor.execute(compiled.sql, args)
            if one:
                first = cursor.fetchone()
                raw = [] if first is None else [first]
            else:
                raw = cursor.fetchall()
            if compiled.row_type is None:
                self._describe(compiled, cursor.description, db.engine.dialect)
        return _convert(compiled, raw)

    def _cursor_options(self, dialect: str) -> dict[str, Any]:
        return {"binary": True} if self._binary and dialect == "postgresql" else {}

    @staticmethod
    def _describe(compiled: _Compiled, description: Any, dialect: Dialect) -> None:
        if len(compiled.types) == len(description):
            processors = tuple(
                kind.result_processor(dialect, column[1])
                for kind, column in zip(compiled.types, description, strict=True)
            )
            # None of them (ids and strings): rows are made without a loop per value.
            compiled.processors = processors if any(processors) else ()
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


@dataclass
class _WritePlan:
    sql: str
    #: The driver's parameter names (named/pyformat), or None (qmark: a sequence in order).
    keys: tuple[str, ...] | None
    #: The statement's own values (processed already), appended to a row's values (in the
    #: order of the statement's ``names``) before `pick`.
    constants: tuple[Any, ...]
    #: A row plus the constants -> the driver's parameter values in order (C, not a loop).
    pick: Callable[[tuple[Any, ...]], tuple[Any, ...]]
    #: (position, bind processor) of the parameters that have one.
    processed: tuple[tuple[int, Callable[[Any], Any]], ...]


class DirectWrite:
    """An INSERT, UPDATE or DELETE with the bound parameters ``names``, compiled once per
    dialect and run inside a write Session's transaction on its DBAPI connection: `execute`
    (rows it returns, for RETURNING) and `executemany`. Bound values go through their columns'
    bind processors (SQLite's datetime text, say), as SQLAlchemy would send them."""

    def __init__(self, statement: Executable, *names: str) -> None:
        self._statement = statement
        self._names = names
        self._plans: dict[str, _WritePlan] = {}

    def execute(self, session: Session, row: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """Run once; the rows a RETURNING clause gives (none without one)."""
        sql, [args] = self._driver_arguments(session.get_bind().dialect, [row])
        return execute_driver_sql(session, sql, args)

    def execute_alone(self, db: Database, row: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """Run once as a transaction of its own, on a pooled connection as `DirectRead.first`
        runs (autocommit on PostgreSQL: no BEGIN and COMMIT round trips), committed when it
        returns; the rows a RETURNING clause gives."""
        sql, [args] = self._driver_arguments(db.engine.dialect, [row])
        with _statement_alone(db, sql, args) as cursor:
            cursor.execute(sql, args)
            return cursor.fetchall() if cursor.description else []

    def executemany(self, session: Session, rows: Sequence[Mapping[str, Any]]) -> int:
        """Run once per row in one driver call; the rows changed."""
        return executemany_driver_sql(
            session, *self._driver_arguments(session.get_bind().dialect, rows)
        )

    def executemany_returning(
        self, session: Session, rows: Sequence[Mapping[str, Any]]
    ) -> list[tuple[Any, ...]]:
        """`executemany` with the rows a RETURNING clause gives, all rows' together (psycopg
        only: its pipelined executemany keeps each row's result)."""
        if not rows:
            return []
        sql, args = self._driver_arguments(session.get_bind().dialect, rows)
        returned: list[tuple[Any, ...]] = []
        with _session_cursor(session, sql, args) as cursor:
            cursor.executemany(sql, args, returning=True)
            returned.extend(cursor.fetchall())
            while cursor.nextset():
                returned.extend(cursor.fetchall())
        return returned

    def _driver_arguments(
        self, dialect: Dialect, rows: Sequence[Mapping[str, Any]]
    ) -> tuple[str, list[Any]]:
        """The compiled SQL and each row's parameters as the driver takes them."""
        plan = self._plans.get(dialect.name) or self._compile(dialect)
        names, constants, pick, processed = self._names, plan.constants, plan.pick, plan.processed
        args: list[Any] = []
        for row in rows:
            ordered: Any = pick(tuple(row[name] for name in names) + constants)
            if processed:
                ordered = list(ordered)
                for position, process in processed:
                    ordered[position] = process(ordered[position])
            args.append(
                ordered if plan.keys is None else dict(zip(plan.keys, ordered, strict=True))
            )
        return plan.sql, args

    def _compile(self, dialect: Dialect) -> _WritePlan:
        compiled = self._statement.compile(dialect=dialect)
        # Python-side column defaults (``default=``, ``onupdate=``) are SQLAlchemy's to run at
        # execution: a statement relying on one must bind that column itself.
        implicit = [
            column.key
            for column in (*compiled.insert_prefetch, *compiled.update_prefetch)
            if column.key not in self._names
        ]
        if implicit:
            raise ValueError(f"bind these columns explicitly: {', '.join(implicit)}")
        binds = {name: bind for bind, name in compiled.bind_names.items()}
        keys = tuple(compiled.positiontup or ()) if compiled.positional else tuple(binds)
        constants: list[Any] = []
        indices: list[int] = []
        processed: list[tuple[int, Callable[[Any], Any]]] = []
        for position, key in enumerate(keys):
            bind = binds[key]
            if isinstance(bind.type, UTCDateTime):
                process = utc_bind_processor(dialect)
            else:
                process = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if key in self._names:
                indices.append(self._names.index(key))
                if process is not None:
                    processed.append((position, process))
            else:
                value = bind.effective_value
                indices.append(len(self._names) + len(constants))
                constants.append(value if process is None else process(value))
        pick = itemgetter(*indices) if len(indices) > 1 else (lambda row: (row[indices[0]],))
        plan = _WritePlan(
            compiled.string,
            None if compiled.positional else keys,
            tuple(constants),
            pick,
            tuple(processed),
        )
        self._plans[dialect.name] = plan
        return plan


def execute_driver_sql(
    session: Session, sql: str, params: Mapping[str, Any] | Sequence[Any]
) -> list[tuple[Any, ...]]:
    """``Connection.exec_driver_sql`` on a write Session's DBAPI connection: SQL in the
    driver's own parameter style (psycopg's binary ``%b`` included), values the driver takes as
    they are. Returns the rows a RETURNING clause gives; errors come as SQLAlchemy's classes."""
    with _session_cursor(session, sql, params) as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


def executemany_driver_sql(session: Session, sql: str, rows: Iterable[Any]) -> int:
    """``Connection.exec_driver_sql`` with many rows, on a write Session's DBAPI connection:
    SQL in the driver's parameter style and rows of values the driver takes as they are (a
    sequence, or an iterator the driver consumes). For bulk inserts, where building each row
    once, in its final form, is what a row costs in Python. Returns the rows changed; errors
    come as SQLAlchemy's classes."""
    if isinstance(rows, Sequence) and not rows:
        return 0
    with _session_cursor(session, sql, rows) as cursor:
        cursor.executemany(sql, rows)
        return int(cursor.rowcount)


@contextmanager
def _statement_alone(db: Database, sql: str, args: Any, **options: Any) -> Iterator[Any]:
    """A cursor (made with the driver's ``options``) on a pooled DBAPI connection, for one
    statement that is its own transaction; a driver error in the block is raised as
    SQLAlchemy's class.

    On PostgreSQL the connection is switched to autocommit for it instead of a BEGIN before and
    the pool's ROLLBACK after, two round trips fewer (see the module's docstring): psycopg sets
    the flag locally, and the connection leaves idle either way. SQLite's connections are in
    autocommit mode already."""
    try:
        connection = db.engine.raw_connection()
    except Exception as exc:
        _raise_wrapped(db.engine.dialect, exc, sql, args)
        raise
    driver = connection.driver_connection
    own_transaction = db.dialect == "postgresql" and not driver.autocommit
    try:
        if own_transaction:
            driver.autocommit = True
        cursor = connection.cursor(**options)
        yield cursor
        cursor.close()
    except Exception as exc:
        # A statement that failed on its own (a unique violation, say) leaves the connection
        # idle, ready for the next; any other state is unknown: not back to the pool.
        if not _idle(driver):
            connection.invalidate()
        _raise_wrapped(db.engine.dialect, exc, sql, args)
        raise
    finally:
        if own_transaction and connection.is_valid:
            driver.autocommit = False  # as the pool's other users expect it
        connection.close()  # back to the pool, which rolls back what a read opened


def _idle(driver: Any) -> bool:
    """The DBAPI connection is open and outside any transaction."""
    info = getattr(driver, "info", None)  # psycopg's connection information
    if info is not None:
        return not driver.closed and info.transaction_status.name == "IDLE"
    return not getattr(driver, "in_transaction", True)  # sqlite3


@contextmanager
def _session_cursor(session: Session, sql: str, args: Any, **options: Any) -> Iterator[Any]:
    """A cursor (made with the driver's ``options``) on the DBAPI connection under the
    Session's transaction (begun if it was not), closed after use; a driver error in the
    block is raised as SQLAlchemy's class."""
    connection = session.connection().connection.dbapi_connection
    cursor = connection.cursor(**options)  # type: ignore[union-attr]
    try:
        yield cursor
    except Exception as exc:
        _raise_wrapped(session.get_bind().dialect, exc, sql, args)
        raise
    finally:
        cursor.close()


def _arguments(compiled: _Compiled, params: Mapping[str, Any]) -> Any:
    """The driver's parameters: a tuple in the statement's order (qmark) or the mapping."""
    values = {**compiled.defaults, **params}
    if compiled.positions is None:
        return values
    return tuple(values[name] for name in compiled.positions)


def _convert(compiled: _Compiled, raw: Sequence[Any]) -> list[Any]:
    """Driver rows as named rows, their columns through the result processors."""
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


def _raise_wrapped(dialect: Dialect, exc: Exception, sql: str, args: Any) -> None:
    """Raise a driver's exception as SQLAlchemy's class for it (`OperationalError` for a
    database that cannot be reached, or a lock or serialization failure), as a Session would:
    callers, run_write's retries and the service's error handlers (503) see one kind of
    exception either way. Returns for any other."""
    dbapi = dialect.loaded_dbapi
    if isinstance(exc, dbapi.Error) and not isinstance(exc, DBAPIError):
        raise DBAPIError.instance(sql, args, exc, dbapi.Error, dialect=dialect) from exc
