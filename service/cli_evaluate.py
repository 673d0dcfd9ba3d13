"""`driftrec evaluate`: offline evaluation of driftrec and baselines on a dataset directory.

Never touches the server's database: the dataset is imported into a temporary one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import click

from interest.evaluation.errors import EvaluationError
from interest.evaluation.names import DEFAULT_METHODS, METHODS, PROTOCOLS


def _json_default(value: object) -> object:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()  # type: ignore[attr-defined]
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _finite(value: object) -> object:
    """JSON has no inf/nan: write them as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _methods(raw: str) -> tuple[str, ...]:
    methods = tuple(m.strip() for m in raw.split(",") if m.strip())
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise click.BadParameter(
            f"unknown method(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(METHODS)}",
            param_hint="--methods",
        )
    return methods


@click.command("evaluate")
@click.argument("dataset_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--protocol", type=click.Choice(PROTOCOLS), default=PROTOCOLS[0], show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write JSON here.")
@click.option(
    "--report",
    "report_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write a Markdown report with plots into this directory (needs matplotlib).",
)
@click.option("--methods", default=",".join(DEFAULT_METHODS), show_default=True)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep item embeddings here between runs, keyed by (model, content hash).",
)
@click.option("--tags", is_flag=True, help="Add MovieLens user tags to the item text.")
@click.option(
    "--ablations",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="JSON file {name: {hr@10, ndcg@10, ...}} added to the report's ablation chart.",
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep the temporary databases here instead of a deleted temporary directory.",
)
@click.option("--progress/--no-progress", default=False, help="Progress bars on stderr.")
@click.pass_context
def evaluate_command(
    ctx: click.Context,
    dataset_dir: Path,
    protocol: str,
    out: Path | None,
    report_dir: Path | None,
    methods: str,
    cache_dir: Path | None,
    tags: bool,
    ablations: Path | None,
    workdir: Path | None,
    progress: bool,
) -> None:
    """Evaluate methods on DATASET_DIR (MovieLens or driftrec's import format).

    Protocols and metrics are those of EVALUATION.md: HR@10, NDCG@10 (95% bootstrap CI),
    Recall@20 and catalogue coverage@10 over the whole catalogue, history excluded.
    """
    # numpy, SciPy and the model stack load only when the command runs.
    from interest.evaluation.harness import EvaluationConfig, evaluate
    from interest.evaluation.report import format_table, write_report
    from service.runtime import Runtime
    from store.settings import Settings, load_settings

    settings = getattr(ctx.obj, "settings", None)
    if not isinstance(settings, Settings):
        settings = load_settings()
    config = EvaluationConfig(
        protocol=protocol,
        methods=_methods(methods),
        cache_dir=cache_dir,
        include_tags=tags,
        workdir=workdir,
        progress=progress,
    )
    extra = None
    if ablations is not None:
        try:
            extra = json.loads(ablations.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="--ablations") from exc
    try:
        result = evaluate(
            dataset_dir,
            settings,
            config,
            runtime_factory=Runtime,
            echo=lambda s: click.echo(s, err=True),
        )
        if extra:
            result["ablations"] = extra
        click.echo(format_table(result))
        for note in result["notes"]:
            click.echo(f"note: {note}")
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(
                json.dumps(_finite(result), indent=2, default=_json_default) + "\n",
                encoding="utf-8",
            )
            click.echo(f"wrote {out}", err=True)
        if report_dir is not None:
            path = write_report(result, report_dir)
            click.echo(f"wrote {path}", err=True)
    except EvaluationError as exc:
        raise click.ClickException(str(exc)) from exc
