"""`store.files.file_sha256`: the same digest at any duty; below 1 it sleeps between blocks."""

from __future__ import annotations

import hashlib
import itertools

import pytest

from store import files


def test_a_paced_checksum_is_the_same_and_sleeps_three_times_its_work_at_a_quarter(
    tmp_path, monkeypatch
) -> None:
    path = tmp_path / "blob"
    path.write_bytes(bytes(range(256)) * (3 * 4096 + 7))  # three 1 MiB blocks and a bit
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    slept: list[float] = []
    monkeypatch.setattr(files.time, "sleep", slept.append)
    assert files.file_sha256(path) == expected
    assert slept == []
    ticks = itertools.count()  # each reading of the thread's CPU clock: 1 ms later
    monkeypatch.setattr(files.time, "thread_time", lambda: next(ticks) / 1000)
    assert files.file_sha256(path, duty=0.25) == expected
    assert slept == [pytest.approx(0.003)] * 4
