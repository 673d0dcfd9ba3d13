"""Experiments: which arm serves a user, and a `Recommender` for each arm.

While an experiment runs, ``percent`` of users are served by its model version through an index
built for that model; the rest by the active model. A user's arm comes from a hash of the
experiment's name and the user id: the same in every worker and on every request, with no
state to store, and independent between experiments. Anonymous requests (no user id) are not
part of an experiment and are served by the active model.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from interest.recommend import Recommendation, Recommender
from store.db import Database
from store.experiments import running_experiment

CONTROL = "control"
TREATMENT = "treatment"
#: Users are split in steps of 0.01%.
BUCKETS = 10_000


def arm_for(experiment: str, user_id: str, percent: float) -> str:
    """``TREATMENT`` for ``percent`` of user ids (deterministically), else ``CONTROL``."""
    digest = hashlib.sha256(f"{experiment}\x00{user_id}".encode()).digest()
    bucket = int.from_bytes(digest[:8], "big") % BUCKETS
    return TREATMENT if bucket < round(percent * BUCKETS / 100) else CONTROL


@dataclass(frozen=True)
class RunningExperiment:
    name: str
    model_version_id: int | None
    percent: float


@dataclass(frozen=True)
class Assignment:
    """The recommender that serves one user, and the experiment arm it stands for."""

    recommender: Recommender
    experiment: str | None = None
    arm: str | None = None

    def label(self, found: Recommendation) -> Recommendation:
        """``found`` marked with this assignment's experiment and arm."""
        if self.experiment is None:
            return found
        return replace(found, experiment=self.experiment, arm=self.arm)


class ExperimentRouter:
    """Routes users to the control or the treatment recommender of the running experiment.

    The running experiment is read from the database at most every ``check_interval_s`` (the
    same cadence as index versions), so starting or stopping one reaches every worker without a
    restart. Treatment recommenders are built once per model version and kept.
    """

    def __init__(
        self,
        db: Database,
        control: Recommender,
        make_treatment: Callable[[int | None], Recommender],
        *,
        check_interval_s: float,
    ) -> None:
        self._db = db
        self._control = control
        self._make_treatment = make_treatment
        self._interval = check_interval_s
        self._lock = threading.Lock()
        self._running: RunningExperiment | None = None
        self._checked_at: float | None = None
        self._treatments: dict[int | None, Recommender] = {}

    def running(self, *, force: bool = False) -> RunningExperiment | None:
        with self._lock:
            now = time.monotonic()
            if force or self._checked_at is None or now - self._checked_at >= self._interval:
                with self._db.read() as session:
                    row = running_experiment(session)
                    self._running = (
                        RunningExperiment(row.name, row.model_version_id, row.percent)
                        if row is not None
                        else None
                    )
                self._checked_at = now
            return self._running

    def assign(self, user_id: str | None) -> Assignment:
        running = self.running()
        if running is None or user_id is None:
            return Assignment(self._control)
        arm = arm_for(running.name, user_id, running.percent)
        if arm == CONTROL:
            return Assignment(self._control, running.name, CONTROL)
        return Assignment(self.treatment(running.model_version_id), running.name, TREATMENT)

    def close(self) -> None:
        """Stop the treatment indexes' background watchers."""
        with self._lock:
            for recommender in self._treatments.values():
                recommender.index.close()

    def treatment(self, model_version_id: int | None) -> Recommender:
        with self._lock:
            if model_version_id not in self._treatments:
                self._treatments[model_version_id] = self._make_treatment(model_version_id)
            return self._treatments[model_version_id]
