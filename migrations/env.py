"""Alembic environment: the URL comes from the same settings loader as the app."""

from __future__ import annotations

from functools import partial

from alembic import context

from store.db import make_engine
from store.models import EVENT_REFERENCES, SQLITE_ONLY_INDEXES, Base
from store.settings import load_settings

target_metadata = Base.metadata
config = context.config


def _url() -> str:
    return config.attributes.get("database_url") or load_settings().database_url


def _compared(obj, name, type_, reflected, compare_to, *, dialect: str) -> bool:  # noqa: ANN001, ARG001 (alembic's hook)
    """Autogenerate compares everything but the SQLite-only indexes, which the models leave out,
    and on PostgreSQL the events' foreign keys, which a trigger enforces there."""
    if type_ == "index" and name in SQLITE_ONLY_INDEXES:
        return False
    return not (
        dialect == "postgresql" and type_ == "foreign_key_constraint" and name in EVENT_REFERENCES
    )


def run_migrations_offline() -> None:
    context.configure(
        url=_url(), target_metadata=target_metadata, render_as_batch=True, literal_binds=True
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = make_engine(_url())
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=True,
            include_object=partial(_compared, dialect=connection.dialect.name),
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
