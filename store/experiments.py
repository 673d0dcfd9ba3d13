"""Experiments: start, stop and look up the running A/B test. Functions never commit."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from store.errors import Conflict, NotFound
from store.models import EXPERIMENT_NAME_LENGTH, Experiment, ModelVersion
from store.types import utcnow


def running_experiment(session: Session) -> Experiment | None:
    return session.scalar(
        select(Experiment).where(Experiment.stopped_at.is_(None)).order_by(Experiment.id.desc())
    )


def start_experiment(
    session: Session, name: str, model_version_id: int | None, percent: float
) -> Experiment:
    """Start serving ``percent`` of users with ``model_version_id`` (None: the plain blend)."""
    check_can_start(session, name, model_version_id, percent)
    experiment = Experiment(name=name, model_version_id=model_version_id, percent=percent)
    session.add(experiment)
    session.flush()
    return experiment


def check_can_start(
    session: Session, name: str, model_version_id: int | None, percent: float
) -> None:
    """Raise `Conflict` for a bad name or percent, when another experiment is running or the
    name was used before, and `NotFound` for an unknown model version."""
    if not name or len(name) > EXPERIMENT_NAME_LENGTH or ":" in name:
        raise Conflict(f"experiment names are 1-{EXPERIMENT_NAME_LENGTH} characters without ':'")
    if not 0 < percent <= 100:
        raise Conflict("percent must be above 0 and at most 100")
    if model_version_id is not None and session.get(ModelVersion, model_version_id) is None:
        raise NotFound(f"model version {model_version_id} not found")
    running = running_experiment(session)
    if running is not None:
        raise Conflict(f"experiment {running.name!r} is running: stop it first")
    if session.scalar(select(Experiment.id).where(Experiment.name == name)) is not None:
        raise Conflict(f"an experiment named {name!r} already ran: choose another name")


def stop_experiment(session: Session) -> Experiment:
    """Stop the running experiment; `NotFound` when none runs."""
    running = running_experiment(session)
    if running is None:
        raise NotFound("no experiment is running")
    running.stopped_at = utcnow()
    session.flush()
    return running


def list_experiments(session: Session) -> list[Experiment]:
    return list(session.scalars(select(Experiment).order_by(Experiment.id)))
