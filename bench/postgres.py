"""The benchmarks' PostgreSQL databases: a fresh one per run, vacuumed and analysed after setup.

The server is ``DRIFTREC_BENCH_POSTGRES_URL`` (default the local one the tests use); each
benchmark drops and recreates its own database there.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy import Connection

POSTGRES_ADMIN = os.environ.get(
    "DRIFTREC_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@contextmanager
def _autocommit(url: str) -> Iterator[Connection]:
    """One connection to ``url`` outside any transaction (what CREATE DATABASE and VACUUM
    need), closed with its engine afterwards."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    engine = create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            yield connection
    finally:
        engine.dispose()


def fresh_database(name: str) -> str:
    """Drop database ``name`` if it exists, create it empty (unmigrated); its URL."""
    from sqlalchemy.engine import make_url

    with _autocommit(POSTGRES_ADMIN) as connection:
        connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    return make_url(POSTGRES_ADMIN).set(database=name).render_as_string(False)


def vacuum_analyze(url: str) -> None:
    """``VACUUM ANALYZE`` the database at ``url`` once its setup is written. The PostgreSQL of
    these machines runs with autovacuum off (``/etc/postgresql/*/main/conf.d/90-ci.conf``): a
    benchmark would otherwise start on its setup's dead rows and without planner statistics,
    where a server with autovacuum on (PostgreSQL's default) would have cleaned up after an
    import. The dead rows the measured load leaves are not vacuumed while it runs."""
    with _autocommit(url) as connection:
        connection.exec_driver_sql("VACUUM ANALYZE")


class WalWatch:
    """What a PostgreSQL server wrote to its WAL and how many checkpoints it started between
    `__init__` and `stop` (the whole server's, not one database's: on these machines the
    benchmark is its only writer). Requested checkpoints (here: forced by WAL volume past
    ``max_wal_size``; the benchmarks issue no CHECKPOINT) are counted apart from timed ones:
    each is followed by full-page images, and the one-second stalls of an open-loop point on
    PostgreSQL began seconds after one started."""

    def __init__(self, url: str) -> None:
        self._url = url
        with _autocommit(url) as connection:
            # pg_stat_checkpointer from PostgreSQL 17, pg_stat_bgwriter before.
            newer = connection.exec_driver_sql(
                "SELECT to_regclass('pg_catalog.pg_stat_checkpointer') IS NOT NULL"
            ).scalar_one()
            self._counts = (
                "SELECT num_timed, num_requested FROM pg_stat_checkpointer"
                if newer
                else "SELECT checkpoints_timed, checkpoints_req FROM pg_stat_bgwriter"
            )
            self._start = self._read(connection)

    def stop(self) -> dict[str, int]:
        with _autocommit(self._url) as connection:
            end = self._read(connection)
        return {
            "wal_bytes": end[0] - self._start[0],
            "checkpoints_timed": end[1] - self._start[1],
            "checkpoints_requested": end[2] - self._start[2],
        }

    def _read(self, connection: Connection) -> tuple[int, int, int]:
        lsn = connection.exec_driver_sql("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").scalar_one()
        timed, requested = connection.exec_driver_sql(self._counts).one()
        return int(lsn), int(timed), int(requested)
