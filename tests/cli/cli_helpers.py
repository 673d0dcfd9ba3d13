"""Helpers for the CLI tests: MovieLens-format catalogues cut from the real dataset, and
running `driftrec` in this process or as a subprocess."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner, Result

from service.cli import cli

REPO_ROOT = Path(__file__).resolve().parents[2]


def movie_rows(source: Path, start: int, stop: int) -> list[list[str]]:
    """Rows ``start:stop`` of movies.csv (without the header)."""
    with open(source / "movies.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))[1:]
    return rows[start:stop]


def write_movielens(source: Path, target: Path, start: int, stop: int) -> Path:
    """A MovieLens directory with movies ``start:stop`` of the real one and all their ratings."""
    target.mkdir(parents=True, exist_ok=True)
    movies = movie_rows(source, start, stop)
    ids = {row[0] for row in movies}
    with open(target / "movies.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["movieId", "title", "genres"])
        writer.writerows(movies)
    with (
        open(source / "ratings.csv", newline="", encoding="utf-8") as src,
        open(target / "ratings.csv", "w", newline="", encoding="utf-8") as out,
    ):
        reader, writer = csv.reader(src), csv.writer(out)
        writer.writerow(next(reader))
        writer.writerows(row for row in reader if row[1] in ids)
    return target


def write_items_jsonl(source: Path, path: Path, start: int, stop: int) -> Path:
    """Movies ``start:stop`` as driftrec items JSONL."""
    with open(path, "w", encoding="utf-8") as out:
        for movie_id, title, genres in movie_rows(source, start, stop):
            categories = [g for g in genres.split("|") if g != "(no genres listed)"]
            item = {"id": movie_id, "title": title, "text": "Genres: " + ", ".join(categories)}
            out.write(json.dumps({**item, "categories": categories}) + "\n")
    return path


def invoke(env: dict[str, str], *args: str) -> Result:
    """Run `driftrec ARGS` in this process (the embedding model stays loaded between calls)."""
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output
    return result


def fields(output: str, subject: str) -> dict[str, str]:
    """The ``key=value`` pairs of the last summary line about ``subject`` ("events a=1 b=2")."""
    lines = [line for line in output.splitlines() if line.startswith(f"{subject} ")]
    assert lines, f"no {subject!r} line in:\n{output}"
    return dict(part.split("=", 1) for part in lines[-1].split() if "=" in part)


def prepare_movielens(env: dict[str, str], source: Path, work_dir: Path, movies: int) -> Path:
    """A migrated database holding movies ``0:movies`` of ``source`` with all their ratings,
    imported and indexed through the CLI; returns the MovieLens cut it imported."""
    directory = write_movielens(source, work_dir / "ml", 0, movies)
    ok(invoke(env, "db", "upgrade"))
    ok(invoke(env, "import", "movielens", str(directory)))
    ok(invoke(env, "reindex"))
    return directory


def spawn(env: dict[str, str], *args: str, log: Path) -> subprocess.Popen[bytes]:
    """Start `driftrec ARGS` as a separate process, its output going to ``log``."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "service.cli", *args],
            cwd=REPO_ROOT,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
