"""The `driftrec` console entry point.

A background job (`service.job_priority.JOB_COMMANDS`) lowers its CPU priority here, before the
command line module and its dependencies (SQLAlchemy, Alembic, the model stack) are imported:
their start-up alone is half a second of CPU that would otherwise compete with a server.
"""

from __future__ import annotations

import sys

from service.job_priority import enter_job_priority, is_job_command
from store.settings import SettingsError, load_settings


def main() -> None:
    if is_job_command(sys.argv[1:]):
        try:
            nice = load_settings().job_nice
        except SettingsError:
            nice = 0  # the command itself reports the invalid setting
        enter_job_priority(nice)
    from service.cli import main as run_command_line

    run_command_line()
