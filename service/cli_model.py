"""`driftrec train` and `driftrec model list|activate`: training, publishing and rollback.

A model changes the item side, so each command that changes the active model also reindexes:
the index is what ties users and items to one space, and servers always score with the model
the active index was built for.
"""

from __future__ import annotations

import json
import math

import click

from store.versions import activate_model_version, list_model_versions


@click.command("train")
@click.option("--no-activate", is_flag=True, help="Publish the version without activating it.")
@click.pass_obj
def train_command(app, no_activate: bool) -> None:  # type: ignore[no-untyped-def]
    """Train the interest model on the events in the database and publish a new version.

    Settings are chosen on held-out recent events. Killing the job leaves the previous version
    serving; rerunning starts over. The index is rebuilt for the new model unless
    --no-activate is given.
    """
    from interest.train import train

    runtime = app.runtime
    version_id = train(runtime, progress=True, activate=not no_activate)
    click.echo(f"train model_version={version_id} active={'no' if no_activate else 'yes'}")
    if not no_activate:
        result = runtime.reindex(progress=True)
        click.echo(f"reindex index_version={result.index_version_id} items={result.item_count}")


@click.group("model")
def model_group() -> None:
    """List and activate trained model versions."""


@model_group.command("list")
@click.pass_obj
def model_list(app) -> None:  # type: ignore[no-untyped-def]
    """Show every model version, its settings and validation metrics."""
    with app.runtime.db.read() as session:
        versions = list_model_versions(session)
        rows = [(v.id, v.active, v.created_at, v.config, v.metrics) for v in versions]
    if not rows:
        click.echo("no trained model: recommendations use the plain decayed blend")
    for version_id, active, created, config, metrics in rows:
        shown = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
        click.echo(
            f"{'*' if active else ' '} {version_id}  {created:%Y-%m-%d %H:%M:%S}  "
            f"config={json.dumps(config)}  metrics={json.dumps(_round(shown))}"
        )


@model_group.command("activate")
@click.argument("version", type=str)
@click.pass_obj
def model_activate(app, version: str) -> None:  # type: ignore[no-untyped-def]
    """Make VERSION the active model (or `none` for the plain blend) and reindex for it."""
    version_id = None if version.lower() == "none" else parse_version_id(version)
    runtime = app.runtime
    with runtime.db.write() as session:
        activate_model_version(session, version_id)
    result = runtime.reindex(progress=True)
    click.echo(f"model_version={version_id or 'none'} index_version={result.index_version_id}")


def parse_version_id(raw: str) -> int:
    try:
        return int(raw)
    except ValueError as exc:
        raise click.BadParameter(f"{raw!r} is not a model version id (or `none`)") from exc


def _round(values: dict[str, float]) -> dict[str, float]:
    return {
        k: (round(v, 4) if isinstance(v, float) and math.isfinite(v) else v)
        for k, v in values.items()
    }
