"""`service.app.configure_logging`: one key=value line per record, formatted by the thread that
logs and written by a thread of its own; every line is written by the time the process exits."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import time
from pathlib import Path

from service.app import BackgroundLogHandler

REPO_ROOT = Path(__file__).resolve().parents[2]

PROGRAM = """
import logging, threading
from service.app import configure_logging

configure_logging("INFO")
log = logging.getLogger("probe")
assert threading.active_count() == 2, "the writer thread"
for n in range(2000):
    log.info("line %d of %s", n, "many")
try:
    raise ValueError("boom")
except ValueError:
    log.exception("failed")
"""


def stderr_of(program: str) -> str:
    """What ``program`` (run by a fresh interpreter in the repository) wrote to stderr."""
    done = subprocess.run(
        [sys.executable, "-c", program],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stderr


def test_lines_are_formatted_and_all_written_before_exit():
    lines = stderr_of(PROGRAM).splitlines()
    assert len(lines) == 2001
    assert lines[0].startswith("ts=") and 'logger=probe msg="line 0 of many"' in lines[0]
    assert 'msg="line 1999 of many"' in lines[1999]
    # The traceback stays on the record's one line, as `KeyValueFormatter` writes it.
    assert 'msg="failed"' in lines[2000] and "ValueError: boom" in lines[2000]
    assert "level=ERROR" in lines[2000]


FORKING = """
import logging, os, sys
from service.app import configure_logging

configure_logging("INFO")
log = logging.getLogger("probe")
log.info("parent before")
child = os.fork()
if child == 0:  # as a gunicorn worker forked from a preloaded master
    for n in range(3):
        log.info("child %d", n)
    sys.exit(0)
os.waitpid(child, 0)
log.info("parent after")
"""


def test_a_forked_child_writes_its_own_lines():
    lines = stderr_of(FORKING).splitlines()
    messages = [line.split('msg="', 1)[1].rstrip('"') for line in lines]
    assert sorted(messages) == ["child 0", "child 1", "child 2", "parent after", "parent before"]


def _record(message: str) -> logging.LogRecord:
    return logging.LogRecord("probe", logging.INFO, __file__, 1, message, None, None)


def test_lines_are_written_while_running_and_at_once_past_capacity():
    """The writer thread writes waiting lines within its interval; with `capacity` lines
    waiting the logging thread writes them itself (here after the writer has stopped)."""
    stream = io.StringIO()
    handler = BackgroundLogHandler(stream, capacity=3, interval=0.02)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.emit(_record("a"))
    deadline = time.monotonic() + 10
    while not stream.getvalue() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stream.getvalue() == "a\n"
    handler.stop()
    handler.emit(_record("b"))
    handler.emit(_record("c"))
    assert stream.getvalue() == "a\n"  # two wait
    handler.emit(_record("d"))
    assert stream.getvalue() == "a\nb\nc\nd\n"
