"""`driftrec experiment start|stop|list`: two model versions served at once, users split.

The control arm is the active model (whatever `driftrec model activate` chose); the treatment
arm serves ``--percent`` of users with another model version through an index built for it,
beside the active one. Servers pick a started or stopped experiment up within
DRIFTREC_RELOAD_INTERVAL_S, without a restart. `GET /v1/stats` compares the arms.
"""

from __future__ import annotations

import click

from service.cli_model import parse_version_id
from store.experiments import check_can_start, list_experiments, start_experiment, stop_experiment


@click.group("experiment")
def experiment_group() -> None:
    """Run an A/B test between the active model and another model version."""


@experiment_group.command("start")
@click.argument("name")
@click.option(
    "--model",
    "model",
    required=True,
    help="The treatment's model version id, or `none` for the plain decayed blend.",
)
@click.option(
    "--percent",
    type=click.FloatRange(0, 100, min_open=True),
    default=50.0,
    show_default=True,
    help="Share of users served by the treatment (chosen by a hash of NAME and the user id).",
)
@click.pass_obj
def experiment_start(app, name: str, model: str, percent: float) -> None:  # type: ignore[no-untyped-def]
    """Build the treatment model's index (unless current), then start experiment NAME."""
    model_id = None if model.lower() == "none" else parse_version_id(model)
    runtime = app.runtime
    with runtime.db.read() as session:
        check_can_start(session, name, model_id, percent)
    result = runtime.build_treatment_index(model_id, progress=True)
    with runtime.db.write() as session:
        start_experiment(session, name, model_id, percent)
    click.echo(
        f"experiment {name} started treatment_model={model_id or 'none'} percent={percent:g} "
        f"index_version={result.index_version_id}"
    )


@experiment_group.command("stop")
@click.pass_obj
def experiment_stop(app) -> None:  # type: ignore[no-untyped-def]
    """Stop the running experiment: every user is served by the active model again."""
    with app.runtime.db.write() as session:
        stopped = stop_experiment(session)
        name = stopped.name
    click.echo(f"experiment {name} stopped")


@experiment_group.command("list")
@click.pass_obj
def experiment_list(app) -> None:  # type: ignore[no-untyped-def]
    """Every experiment, running (*) or stopped."""
    with app.runtime.db.read() as session:
        rows = [
            (e.name, e.model_version_id, e.percent, e.started_at, e.stopped_at)
            for e in list_experiments(session)
        ]
    if not rows:
        click.echo("no experiments")
    for name, model_id, percent, started, stopped in rows:
        until = f"{stopped:%Y-%m-%d %H:%M:%S}" if stopped else "running"
        click.echo(
            f"{'*' if stopped is None else ' '} {name}  treatment_model={model_id or 'none'}  "
            f"percent={percent:g}  {started:%Y-%m-%d %H:%M:%S} -> {until}"
        )
