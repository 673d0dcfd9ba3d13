"""``python -m bench.ml1m_shape DIR``: a synthetic rating log of ML-1M's size in ML-1M's layout.

`driftrec evaluate` is also judged on ML-1M, which is not on these machines. This writes a log of
its shape, so that the whole evaluation can be run at that size (time, memory, the ``::``
separated Latin-1 files): 6,040 users, 3,706 movies (the first ml-latest-small titles, with their
genres), about 1,000,000 ratings. Popularity is Zipf-like, each user favours one genre, and
ratings come in bursts seconds apart, a few days between bursts. There is no signal past that,
so the quality figures of a run on it mean nothing; its run time and memory do.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from bench.data import MOVIELENS

USERS, MOVIES, RATINGS = 6_040, 3_706, 1_000_209
FIRST_TIMESTAMP = 956_703_932  # ML-1M's first rating, 2000-04-25


def write(directory: Path, seed: int = 7) -> int:
    """Write ``movies.dat`` and ``ratings.dat`` into ``directory``; return the ratings count."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    with open(MOVIELENS / "movies.csv", newline="", encoding="utf-8") as handle:
        movies = list(csv.reader(handle))[1 : MOVIES + 1]
    with open(directory / "movies.dat", "w", encoding="latin-1", errors="replace") as out:
        for number, (_, title, genres) in enumerate(movies, start=1):
            out.write(f"{number}::{title}::{genres}\n")
    by_genre: dict[str, list[int]] = {}
    for index, (_, _, genres) in enumerate(movies):
        by_genre.setdefault(genres.split("|")[0], []).append(index)
    genre_movies = list(by_genre.values())
    popularity = 1.0 / np.arange(1, len(movies) + 1) ** 0.9
    popularity = popularity[rng.permutation(len(movies))]
    counts = np.maximum(20, rng.lognormal(4.6, 1.0, USERS)).astype(int)
    counts = (counts * RATINGS / counts.sum()).astype(int) + 1
    written = 0
    with open(directory / "ratings.dat", "w", encoding="latin-1") as out:
        for user, count in enumerate(counts.tolist(), start=1):
            n = min(count, len(movies) - 1)
            weights = popularity.copy()
            weights[genre_movies[rng.integers(len(genre_movies))]] *= 5  # the user's genre
            items = rng.choice(len(movies), size=n, replace=False, p=weights / weights.sum()) + 1
            start = FIRST_TIMESTAMP + rng.integers(0, 80_000_000)
            gaps = np.where(
                rng.random(n) < 0.1, rng.integers(86_400, 30 * 86_400, n), rng.integers(1, 120, n)
            )
            times = start + np.cumsum(gaps)
            stars = rng.integers(1, 6, n)
            out.writelines(
                f"{user}::{item}::{star}::{time}\n"
                for item, star, time in zip(
                    items.tolist(), stars.tolist(), times.tolist(), strict=True
                )
            )
            written += n
    return written


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ml1m_shape", description=__doc__)
    parser.add_argument("directory", type=Path)
    args = parser.parse_args()
    print(f"ratings={write(args.directory)} directory={args.directory}")


if __name__ == "__main__":
    main()
