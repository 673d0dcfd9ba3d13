"""Shared fixtures: migrated SQLite and PostgreSQL databases, and MovieLens data.

``database_url`` (and ``db`` on top of it) runs a test on both backends. PostgreSQL is a real
server (``DRIFTREC_TEST_POSTGRES_URL``, default 127.0.0.1:5432 as user postgres); each test gets
its own freshly created and migrated database, dropped afterwards. An unreachable server fails the
test: the store's tests must never pass by skipping PostgreSQL silently.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # before anything can import huggingface_hub

import pytest  # noqa: E402
from sqlalchemy import Engine, create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from sqlalchemy.exc import OperationalError  # noqa: E402
from sqlalchemy.pool import NullPool  # noqa: E402

from store import importing  # noqa: E402
from store.db import Database  # noqa: E402
from store.migrate import upgrade  # noqa: E402

POSTGRES_ADMIN_URL = os.environ.get(
    "DRIFTREC_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A migrated SQLite database file in the test's temporary directory."""
    url = f"sqlite:///{tmp_path}/driftrec.db"
    upgrade(url)
    return url


def _create_database(admin: Engine, template: str | None = None) -> str:
    """Create a uniquely named database (a copy of ``template`` if given); return its URL."""
    name = f"driftrec_test_{uuid.uuid4().hex[:16]}"
    clause = f' TEMPLATE "{template}"' if template else ""
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"{clause}'))
    except OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {make_url(POSTGRES_ADMIN_URL)!r} "
            f"(set DRIFTREC_TEST_POSTGRES_URL): {exc.orig}",
            pytrace=False,
        )
    return make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def _drop_database(admin: Engine, url: str) -> None:
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def _postgres_admin() -> Iterator[Engine]:
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    yield admin
    admin.dispose()


@pytest.fixture(scope="session")
def _migrated_postgres_template(_postgres_admin: Engine) -> Iterator[str]:
    """Migrated once per test session; each test gets a copy (faster than migrating each)."""
    url = _create_database(_postgres_admin)
    try:
        upgrade(url)
        yield make_url(url).database
    finally:
        _drop_database(_postgres_admin, url)


@pytest.fixture
def empty_postgres_url(_postgres_admin: Engine) -> Iterator[str]:
    """A freshly created, unmigrated PostgreSQL database, dropped after the test."""
    url = _create_database(_postgres_admin)
    yield url
    _drop_database(_postgres_admin, url)


@pytest.fixture
def postgres_url(_postgres_admin: Engine, _migrated_postgres_template: str) -> Iterator[str]:
    """A freshly created, migrated PostgreSQL database, dropped after the test."""
    url = _create_database(_postgres_admin, template=_migrated_postgres_template)
    yield url
    _drop_database(_postgres_admin, url)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Each test using this runs once on SQLite and once on PostgreSQL."""
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return request.getfixturevalue(fixture)


@pytest.fixture
def split_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bulk import's batch of two or more events splits by user over the import's
    transactions (`Database.write_lanes`: on PostgreSQL)."""
    monkeypatch.setattr(importing, "MIN_LANE_EVENTS", 1)


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    try:
        yield database
    finally:
        database.dispose()


@pytest.fixture
def movielens_dir() -> Path:
    """The read-only ml-latest-small dataset beside the repository (or DRIFTREC_DEMO_DATA)."""
    path = Path(__file__).resolve().parents[2] / "shared/datasets/ml-latest-small"
    if not path.is_dir() and os.environ.get("DRIFTREC_DEMO_DATA"):
        path = Path(os.environ["DRIFTREC_DEMO_DATA"])
    if not (path / "ratings.csv").is_file():
        pytest.fail(f"MovieLens ml-latest-small not found at {path} (set DRIFTREC_DEMO_DATA)")
    return path


# Tiny datasets in each MovieLens layout. Every layout holds the same 4 movies and 5 ratings, so
# tests can compare them; movie 4 has no genre and is rated by nobody.
TINY_MOVIES = [
    ("1", "Toy Story (1995)", ["Adventure", "Animation", "Children"]),
    ("2", "Jumanji (1995)", ["Adventure", "Fantasy"]),
    ("3", "Amélie (Fabuleux destin d'Amélie Poulain, Le) (2001)", ["Comedy", "Romance"]),
    ("4", "Untitled, The (2000)", []),
]
TINY_RATINGS = [  # user, movie, rating, epoch seconds
    ("1", "1", "4.0", 964982703),
    ("1", "3", "5.0", 964981247),
    ("2", "1", "3.5", 1445714994),
    ("2", "2", "2.0", 1445715000),
    ("10", "3", "1.0", 0),
]
ML100K_GENRES = ["unknown", "Action", "Adventure", "Animation", "Children", "Comedy", "Fantasy",
                 "Romance"]  # fmt: skip


def _write_latest(directory: Path) -> None:
    directory.mkdir()
    lines = ["movieId,title,genres"]
    for movie_id, title, genres in TINY_MOVIES:
        quoted = f'"{title}"' if "," in title else title
        lines.append(f"{movie_id},{quoted},{'|'.join(genres) or '(no genres listed)'}")
    (directory / "movies.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    ratings = ["userId,movieId,rating,timestamp"]
    ratings += [f"{u},{m},{r},{t}" for u, m, r, t in TINY_RATINGS]
    (directory / "ratings.csv").write_text("\n".join(ratings) + "\n", encoding="utf-8")
    tags = ["userId,movieId,tag,timestamp", "1,1,pixar,1", "2,1,Pixar,2", '2,1,"funny, warm",3']
    (directory / "tags.csv").write_text("\n".join(tags) + "\n", encoding="utf-8")


def _write_100k(directory: Path) -> None:
    directory.mkdir()
    genre_lines = [f"{name}|{index}" for index, name in enumerate(ML100K_GENRES)]
    (directory / "u.genre").write_text("\n".join(genre_lines) + "\n\n", encoding="latin-1")
    items = []
    for movie_id, title, genres in TINY_MOVIES:
        flags = ["1" if name in genres else "0" for name in ML100K_GENRES]
        if not genres:
            flags[0] = "1"  # ml-100k marks genre-less movies "unknown"
        fields = [movie_id, title, "01-Jan-1995", "", "http://example.invalid/", *flags]
        items.append("|".join(fields))
    (directory / "u.item").write_text("\n".join(items) + "\n", encoding="latin-1")
    data = [f"{u}\t{m}\t{int(float(r))}\t{t}" for u, m, r, t in TINY_RATINGS]
    (directory / "u.data").write_text("\n".join(data) + "\n", encoding="latin-1")


def _write_1m(directory: Path) -> None:
    directory.mkdir()
    movies = [f"{m}::{title}::{'|'.join(genres)}" for m, title, genres in TINY_MOVIES]
    (directory / "movies.dat").write_text("\n".join(movies) + "\n", encoding="latin-1")
    ratings = [f"{u}::{m}::{int(float(r))}::{t}" for u, m, r, t in TINY_RATINGS]
    (directory / "ratings.dat").write_text("\n".join(ratings) + "\n", encoding="latin-1")


@pytest.fixture
def tiny_movielens_dirs(tmp_path: Path) -> dict[str, Path]:
    """{"ml-latest-small": dir, "ml-100k": dir, "ml-1m": dir} holding TINY_MOVIES/TINY_RATINGS."""
    root = tmp_path / "movielens"
    root.mkdir()
    writers = {"ml-latest-small": _write_latest, "ml-100k": _write_100k, "ml-1m": _write_1m}
    for name, write in writers.items():
        write(root / name)
    return {name: root / name for name in writers}
