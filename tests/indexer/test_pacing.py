"""Job pacing: sleeps between chunks only while other processes keep the machine busy."""

import pytest

from indexer import pacing


@pytest.fixture
def clock(monkeypatch):
    """A fake /proc/stat and process clock: each sample advances by what the test says."""
    state = {"wall": 0.0, "own": 0.0, "busy": 0.0, "total": 0.0, "slept": []}
    monkeypatch.setattr(
        pacing,
        "_sample",
        lambda: (state["wall"], state["own"], state["busy"], state["total"]),
    )
    monkeypatch.setattr(pacing.time, "sleep", state["slept"].append)
    monkeypatch.setattr(pacing.os, "cpu_count", lambda: 2)
    yield state
    pacing.set_share(1.0)


def _work(state, *, wall, own, machine_cores):  # type: ignore[no-untyped-def]
    """``wall`` seconds pass; the job used ``own`` CPU seconds, the machine ``machine_cores``."""
    state["wall"] += wall
    state["own"] += own
    state["total"] += 2 * wall * 100  # ticks of both cores
    state["busy"] += machine_cores * wall * 100


def test_a_busy_machine_makes_the_job_sleep_for_its_share(clock):
    pacing.set_share(0.25)
    pacing.pause()  # first boundary: a baseline only
    _work(clock, wall=0.2, own=0.2, machine_cores=1.9)  # others used 1.7 cores
    pacing.pause()
    assert clock["slept"] == [pytest.approx(0.6)]  # 0.2 s of work is 25% of 0.8 s


def test_an_idle_machine_lets_the_job_run(clock):
    pacing.set_share(0.25)
    pacing.pause()
    _work(clock, wall=0.2, own=0.2, machine_cores=1.1)  # others: 0.1 core
    pacing.pause()
    assert clock["slept"] == []


def test_short_slices_and_unpaced_jobs_never_sleep(clock):
    pacing.set_share(0.25)
    pacing.pause()
    _work(clock, wall=0.01, own=0.01, machine_cores=2.0)
    pacing.pause()  # too short to measure
    pacing.set_share(1.0)
    _work(clock, wall=1.0, own=1.0, machine_cores=2.0)
    pacing.pause()
    assert clock["slept"] == []


def test_a_busy_machine_holds_the_math_libraries_to_one_thread_until_it_is_idle(clock):
    import faiss
    from threadpoolctl import threadpool_info, threadpool_limits

    def threads() -> set[int]:
        return {lib["num_threads"] for lib in threadpool_info()} | {faiss.omp_get_max_threads()}

    with threadpool_limits(limits=2):  # what a job on two cores starts with
        pacing.set_share(0.25)
        pacing.pause()
        _work(clock, wall=0.2, own=0.2, machine_cores=1.9)
        pacing.pause()
        assert threads() == {1}
        _work(clock, wall=0.2, own=0.2, machine_cores=1.1)
        pacing.pause()
        assert threads() == {2}
