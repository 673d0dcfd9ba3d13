"""Present an evaluation result: a plain-text table, and a Markdown report with plots.

matplotlib is imported only when a report is written (it is a `dev` extra, not a server
dependency).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from interest.evaluation.errors import EvaluationError


def _f(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _short_settings(settings: Mapping[str, Any]) -> str:
    shown = {k: v for k, v in settings.items() if k != "validation_grid"}
    return ", ".join(f"{k}={v}" for k, v in shown.items())


def table_rows(result: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    replay = result.get("protocol") == "replay"
    header = ["method", "HR@10", "NDCG@10", "NDCG@10 95% CI", "Recall@20", "Coverage@10"]
    if replay:
        header += ["new-item HR@10 (n)"]
    header += ["settings", "time (s)"]
    rows = []
    for name, metrics in result["results"].items():
        if "skipped" in metrics:
            rows.append([name, *(["-"] * (len(header) - 3)), metrics["skipped"], "-"])
            continue
        lo, hi = metrics["ndcg@10_ci95"]
        row = [
            name,
            _f(metrics["hr@10"]),
            _f(metrics["ndcg@10"]),
            f"[{lo:.4f}, {hi:.4f}]",
            _f(metrics["recall@20"]),
            _f(metrics["coverage@10"]),
        ]
        if replay:
            row.append(f"{_f(metrics.get('new_item_hr@10'))} ({metrics.get('new_item_count', 0)})")
        row += [
            _short_settings(metrics.get("settings", {})),
            f"{sum(metrics.get('timings_s', {}).values()):.1f}",
        ]
        rows.append(row)
    return header, rows


def format_table(result: Mapping[str, Any]) -> str:
    """A fixed-width table of every method's metrics, for the terminal."""
    header, rows = table_rows(result)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def markdown_table(result: Mapping[str, Any]) -> str:
    header, rows = table_rows(result)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _pyplot():  # type: ignore[no-untyped-def]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise EvaluationError(
            "the report needs matplotlib: pip install 'driftrec[dev]' (or matplotlib>=3.8)"
        ) from exc
    return plt


def plot_ndcg_by_history(result: Mapping[str, Any], path: Path) -> None:
    plt = _pyplot()
    methods = {n: m for n, m in result["results"].items() if "ndcg@10_by_history" in m}
    buckets: list[str] = []
    for metrics in methods.values():
        for bucket in metrics["ndcg@10_by_history"]:
            if bucket not in buckets:
                buckets.append(bucket)
    buckets.sort(key=lambda b: int(b.split("-")[0].rstrip("+")))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(buckets) + 2), 4.0))
    width = 0.8 / max(1, len(methods))
    for i, (name, metrics) in enumerate(methods.items()):
        per = metrics["ndcg@10_by_history"]
        values = [per[b]["ndcg@10"] if b in per else math.nan for b in buckets]
        ax.bar([x + i * width for x in range(len(buckets))], values, width, label=name)
    first = next(iter(methods.values()), {}).get("ndcg@10_by_history", {})
    labels = [f"{b}\n(n={first[b]['n']})" if b in first else b for b in buckets]
    ax.set_xticks([x + width * (len(methods) - 1) / 2 for x in range(len(buckets))], labels)
    ax.set_xlabel("history length (interactions before the target)")
    ax.set_ylabel("NDCG@10")
    ax.set_title(f"{Path(result['dataset']).name} - {result['protocol']}")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_ablations(ablations: Mapping[str, Mapping[str, Any]], path: Path) -> None:
    plt = _pyplot()
    names = list(ablations)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(names) + 2), 4.0))
    values = [float(ablations[n].get("ndcg@10", math.nan)) for n in names]
    bars = ax.bar(range(len(names)), values)
    for name, bar in zip(names, bars, strict=True):
        ci = ablations[name].get("ndcg@10_ci95")
        if ci:
            centre = bar.get_x() + bar.get_width() / 2
            ax.plot([centre, centre], ci, color="black", linewidth=1)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel("NDCG@10")
    ax.set_title("ablations")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(
    result: Mapping[str, Any],
    directory: str | Path,
    *,
    ablations: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """Write ``report.md`` with the table, settings, timings and plots; return its path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ablations = ablations if ablations is not None else result.get("ablations")
    plot_ndcg_by_history(result, directory / "ndcg_by_history.png")
    lines = [
        f"# driftrec evaluation: {result['dataset']}",
        "",
        f"- protocol: **{result['protocol']}**; {result['n_users']} users, "
        f"{result['n_items']} items, {result.get('n_interactions', '?')} interactions, "
        f"{result.get('n_cases', '?')} ranked cases, "
        f"{result.get('n_train_interactions', '?')} training interactions",
        f"- item text: {result.get('item_text', 'title + genres')}; "
        f"embedder: {result.get('embedder_model', '?')}",
    ]
    if "cut" in result:
        lines.append(f"- replay cut (90% quantile of timestamps): {result['cut']}")
    lines += [
        "- the whole catalogue is ranked with the user's history excluded; tied scores rank "
        "ahead of the target; settings of the baselines were chosen on the validation target",
        "",
        markdown_table(result),
        "",
        "![NDCG@10 by history length](ndcg_by_history.png)",
        "",
    ]
    if ablations:
        plot_ablations(ablations, directory / "ablations.png")
        lines += ["## Ablations", "", "| variant | HR@10 | NDCG@10 |", "|---|---|---|"]
        lines += [
            f"| {n} | {_f(m.get('hr@10'))} | {_f(m.get('ndcg@10'))} |" for n, m in ablations.items()
        ]
        lines += ["", "![Ablations](ablations.png)", ""]
    grids = {
        n: m["settings"]["validation_grid"]
        for n, m in result["results"].items()
        if "validation_grid" in m.get("settings", {})
    }
    if grids:
        lines += ["## Settings chosen on validation", ""]
        for name, grid in grids.items():
            keys = list(grid[0])
            lines += [f"### {name}", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
            lines += ["| " + " | ".join(_f(row[k]) for k in keys) + " |" for row in grid]
            lines.append("")
    if result.get("notes"):
        lines += ["## Notes", "", *(f"- {note}" for note in result["notes"]), ""]
    lines += ["## Timings (s)", "", "| step | seconds |", "|---|---|"]
    lines += [f"| {k} | {_f(v, 1)} |" for k, v in result.get("timings_s", {}).items()]
    for name, metrics in result["results"].items():
        for step, seconds in metrics.get("timings_s", {}).items():
            lines.append(f"| {name} {step} | {_f(seconds, 1)} |")
    path = directory / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
