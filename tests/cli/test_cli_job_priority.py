"""Background jobs run at a lower CPU priority in their own session (see service.job_priority).

Each case runs a real Python process that enters the job priority, as `driftrec reindex` does,
and reports what the kernel says about the process that does the work.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from cli_helpers import REPO_ROOT

from service.cli import cli
from service.job_priority import CHILD_ENV, JOB_COMMANDS, autogroups_active, is_job_command
from store.settings import SettingsError, load_settings

REPORT = """
import json, os, signal, sys, time
# Ctrl-C handled as in a terminal, even when the test run inherited an ignored SIGINT (a
# background job of a non-interactive shell does).
signal.signal(signal.SIGINT, signal.default_int_handler)
nice_at_start = os.nice(0)
from service.job_priority import enter_job_priority
enter_job_priority(int(sys.argv[1]))
autogroup = open("/proc/self/autogroup").read() if os.path.exists("/proc/self/autogroup") else ""
import threading
policies = []  # the work's main thread, and a thread it starts (math libraries start some)
thread = threading.Thread(target=lambda: policies.append(os.sched_getscheduler(0)))
thread.start(); thread.join()
print(json.dumps({"pid": os.getpid(), "sid": os.getsid(0), "nice": os.nice(0),
                  "nice_at_start": nice_at_start, "autogroup": autogroup,
                  "policies": [os.sched_getscheduler(0), *policies]}), flush=True)
time.sleep(float(sys.argv[2]))
sys.exit(int(sys.argv[3]))
"""


def start(nice: int, sleep_s: float = 0.0, status: int = 0) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != CHILD_ENV}
    return subprocess.Popen(
        [sys.executable, "-c", REPORT, str(nice), str(sleep_s), str(status)],
        cwd=REPO_ROOT,
        env={**env, "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.PIPE,
        text=True,
        # Like a command typed in an interactive shell: the leader of its own process group.
        process_group=0,
    )


def report(process: subprocess.Popen[str]) -> dict[str, object]:
    assert process.stdout is not None
    return json.loads(process.stdout.readline())


def test_job_works_in_its_own_niced_session():
    process = start(nice=7)
    seen = report(process)
    assert process.wait(timeout=30) == 0
    assert seen["nice"] == 7
    if autogroups_active():
        # The work ran in a child with a session (and so an autogroup) of its own, niced too:
        # plain nice would not count against a server in another session.
        assert seen["pid"] != process.pid
        assert seen["sid"] == seen["pid"]
        assert str(seen["autogroup"]).strip().endswith("nice 7")
        # Niced before its interpreter started, not only once the job code ran.
        assert seen["nice_at_start"] == 7
    # Above the lowest priority the job keeps the normal policy (see the next test).
    assert seen["policies"] == [os.SCHED_OTHER, os.SCHED_OTHER]


def test_the_lowest_priority_also_takes_the_idle_policy():
    """At nice 19 a server worker waking up preempts the job at once (SCHED_IDLE), in every
    thread the job starts."""
    process = start(nice=19)
    seen = report(process)
    assert process.wait(timeout=30) == 0
    assert seen["nice"] == 19
    assert seen["policies"] == [os.SCHED_IDLE, os.SCHED_IDLE]


def test_nice_zero_changes_nothing():
    process = start(nice=0)
    seen = report(process)
    assert process.wait(timeout=30) == 0
    assert seen["pid"] == process.pid and seen["nice"] == os.nice(0)
    assert seen["policies"] == [os.SCHED_OTHER, os.SCHED_OTHER]


def test_exit_status_passes_through():
    process = start(nice=5, status=3)
    report(process)
    assert process.wait(timeout=30) == 3


@pytest.mark.skipif(not autogroups_active(), reason="no re-run without autogroups")
def test_killing_the_job_kills_the_work():
    process = start(nice=5, sleep_s=60)
    worker = int(report(process)["pid"])
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
    deadline = time.monotonic() + 10
    while _alive(worker):
        assert time.monotonic() < deadline, "the child outlived the killed job"
        time.sleep(0.05)


@pytest.mark.skipif(not autogroups_active(), reason="no re-run without autogroups")
def test_interrupt_reaches_the_work():
    process = start(nice=5, sleep_s=60)
    report(process)
    process.send_signal(signal.SIGINT)  # what Ctrl-C sends to the terminal's foreground group
    assert process.wait(timeout=10) != 0


def test_the_entry_point_lowers_priority_for_jobs_only(cli_env, monkeypatch):
    """`driftrec` (service.launcher.main) enters job priority, at DRIFTREC_JOB_NICE, before
    running a job command, and not before any other; the commands themselves never do."""
    import service.cli
    import service.launcher

    entered: list[int] = []
    paced: list[float] = []
    monkeypatch.setattr(service.launcher, "enter_job_priority", entered.append)
    monkeypatch.setattr(service.launcher.pacing, "set_share", paced.append)
    monkeypatch.setattr(service.cli, "main", lambda: None)  # the command itself is not the point
    env = {**cli_env, "DRIFTREC_JOB_NICE": "15", "DRIFTREC_JOB_CPU_SHARE": "0.5"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for args, expected in [
        (["db", "upgrade"], []),
        (["serve", "--workers", "2"], []),
        (["reindex", "--full"], [15]),
        (["experiment", "start", "ab", "--model", "none"], [15]),
    ]:
        entered.clear()
        paced.clear()
        monkeypatch.setattr(sys, "argv", ["driftrec", *args])
        service.launcher.main()
        assert entered == expected, args
        assert paced == ([0.5] if expected else []), args


def test_the_job_table_names_real_commands():
    for entry in JOB_COMMANDS:
        path = entry if isinstance(entry, tuple) else (entry,)
        command = cli
        for part in path:
            assert part in command.commands, f"no command {' '.join(path)!r}"  # type: ignore[attr-defined]
            command = command.commands[part]  # type: ignore[attr-defined]


def test_job_commands_are_recognised_from_the_command_line():
    assert is_job_command(["reindex", "--full"])
    assert is_job_command(["import", "events", "f.csv"])
    assert is_job_command(["experiment", "start", "x", "--model", "none"])
    assert not is_job_command(["experiment", "list"])
    assert not is_job_command(["serve", "--workers", "2"])
    assert not is_job_command(["--version"])
    assert not is_job_command([])


def test_job_nice_is_checked():
    assert load_settings({"DRIFTREC_JOB_NICE": "0"}).job_nice == 0
    with pytest.raises(SettingsError, match="DRIFTREC_JOB_NICE"):
        load_settings({"DRIFTREC_JOB_NICE": "20"})


def test_job_cpu_share_is_checked():
    assert load_settings({"DRIFTREC_JOB_CPU_SHARE": "1"}).job_cpu_share == 1.0
    for bad in ("0", "1.5", "-0.2"):
        with pytest.raises(SettingsError, match="DRIFTREC_JOB_CPU_SHARE"):
            load_settings({"DRIFTREC_JOB_CPU_SHARE": bad})


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
