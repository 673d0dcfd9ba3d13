"""Background jobs (reindex, train, import, ...) yield the CPU to a server on the same machine.

Plain ``nice`` is not enough on Linux desktops and most servers: with ``sched_autogroup`` on
(the default of most distributions), CPU time is shared first between *sessions* (autogroups),
and a process's nice value only counts against others in its own session. A job started from
a shell or cron is in another session than `driftrec serve`, so at nice 19 it still took half
the CPU from the server (on the 2-core benchmark machine, two nice-19 busy loops pushed the
recommendation p99 from ~10 ms to 2 s; the same loops in their own session at autogroup nice
19 left it at ~10-30 ms).

So a job command runs in a child process in its own session whose autogroup is niced: the
`driftrec` entry point (`service.launcher`) decides this before it imports anything heavy, so
even the job's start-up yields. The parent stays where the caller started it (in the terminal's
foreground group, so Ctrl-C reaches it), forwards SIGINT, SIGTERM and SIGHUP, and exits with the
child's status. The child dies with the parent (``PR_SET_PDEATHSIG``), so ``kill -9`` of the job
stops the work as before.
Where autogroups are off or absent, the job only lowers its own nice value.

At the lowest priority (nice 19, the default) the job also runs under the ``SCHED_IDLE``
policy. A niced autogroup bounds the job's share of the CPU, not how long a server worker
waits when it wakes up on a core the job is using: the kernel lets the running job finish its
slice first, and a CPU-bound job took part of every slice. A waking task of any other policy
preempts a ``SCHED_IDLE`` one at once, and the scheduler places wakeups on a core that runs
only such tasks as if it were idle. Measured here (100k benchmark server at 200
recommendations/s, 20 s per case, p99 against 15-16 ms with nothing beside it): two busy
loops at autogroup nice 19 gave 31.6-33.9 ms, 17.8-25.9 ms with ``SCHED_IDLE`` too; a
memory-bound numpy loop 39-96 ms, and 19.6-24.0 ms. The job's share of the time left idle
is unchanged (its autogroup's weight decides that).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from pathlib import Path

#: Set in the re-run child, so it lowers its priority instead of re-running again.
CHILD_ENV = "DRIFTREC_JOB_SESSION"
AUTOGROUP_SWITCH = Path("/proc/sys/kernel/sched_autogroup_enabled")
OWN_AUTOGROUP = Path("/proc/self/autogroup")
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
PR_SET_PDEATHSIG = 1
#: From this nice value on (the lowest), a job also runs under ``SCHED_IDLE`` (module doc).
IDLE_POLICY_NICE = 19


def autogroups_active() -> bool:
    try:
        return AUTOGROUP_SWITCH.read_text().strip() == "1" and OWN_AUTOGROUP.exists()
    except OSError:
        return False


def enter_job_priority(nice: int) -> None:
    """Lower this job's CPU priority to ``nice`` (1-19; 0 leaves it alone); see the module
    docstring. May not return: the parent of a re-run exits with its child's status."""
    if nice <= 0 or not hasattr(os, "nice"):
        return
    nice = min(nice, 19)
    if autogroups_active() and os.environ.get(CHILD_ENV) != "1":
        sys.exit(_rerun_in_own_session(nice))
    _lower_priority(nice)


def _lower_priority(nice: int) -> None:
    """This process's nice value, and its session's autogroup's when autogroups are on; at
    `IDLE_POLICY_NICE` also the ``SCHED_IDLE`` policy (inherited by threads started later)."""
    if autogroups_active():
        try:
            OWN_AUTOGROUP.write_text(str(nice))
        except OSError:
            pass  # some kernels refuse it to unprivileged users: nice alone then
    os.setpriority(os.PRIO_PROCESS, 0, max(nice, os.getpriority(os.PRIO_PROCESS, 0)))
    if nice >= IDLE_POLICY_NICE and hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except OSError:
            pass  # a container's seccomp profile may refuse it: the nice value stays


def _rerun_in_own_session(nice: int) -> int:
    def prepare_child() -> None:
        # After fork and setsid, before exec: even the child's interpreter start-up is niced.
        _die_with_parent()
        _lower_priority(nice)

    child = subprocess.Popen(
        sys.orig_argv,
        env={**os.environ, CHILD_ENV: "1"},
        start_new_session=True,
        preexec_fn=prepare_child,  # noqa: PLW1509 - the CLI is single-threaded here
    )

    def forward(signum: int, _frame: object) -> None:
        child.send_signal(signum)

    for signum in FORWARDED:
        if signal.getsignal(signum) is not signal.SIG_IGN:  # e.g. SIGINT of a background job
            signal.signal(signum, forward)
    status = child.wait()
    if status < 0:  # killed by a signal: end the same way
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    return status


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


#: The commands that run at job priority: a top-level name, or (group, command).
JOB_COMMANDS: frozenset[str | tuple[str, str]] = frozenset(
    {
        "reindex",
        "train",
        "import",
        "export",
        "verify",
        "rebuild-profiles",
        "evaluate",
        ("experiment", "start"),
    }
)


def is_job_command(args: list[str]) -> bool:
    """Whether `driftrec ARGS` runs one of `JOB_COMMANDS` (options before it are skipped)."""
    words = [arg for arg in args if not arg.startswith("-")]
    if not words:
        return False
    return words[0] in JOB_COMMANDS or tuple(words[:2]) in JOB_COMMANDS
