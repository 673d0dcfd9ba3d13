"""The `driftrec` console entry point.

A background job (`service.job_priority.JOB_COMMANDS`) lowers its CPU priority here, before the
command line module and its dependencies (SQLAlchemy, Alembic, the model stack) are imported:
their start-up alone is half a second of CPU that would otherwise compete with a server.
"""

from __future__ import annotations

import sys

from indexer import pacing
from service.job_priority import enter_job_priority, is_job_command
from store.settings import SettingsError, load_settings


def main() -> None:
    if is_job_command(sys.argv[1:]):
        try:
            settings = load_settings()
        except SettingsError:
            settings = None  # the command itself reports the invalid setting
        enter_job_priority(settings.job_nice if settings else 0)
        pacing.set_share(settings.job_cpu_share if settings else 1.0)
    from service.cli import main as run_command_line

    run_command_line()
