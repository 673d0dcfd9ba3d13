"""The one table (terminal and Markdown), the JSON results and the scale curve PNG."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.data import REPO_ROOT

RESULTS_DIR = REPO_ROOT / "bench" / "results"

Row = tuple[str, str, str, str, str, str, str]  # benchmark, case, value, reference, ratio, ...
HEADER: Row = ("benchmark", "case", "value", "reference (same run)", "ratio", "target", "holds")


def _size(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 else f"{n // 1000}k"


def _holds(ok: bool | None) -> str:
    return "-" if ok is None else ("yes" if ok else "NO")


def _server_side(summary: dict[str, Any]) -> str:
    """The server's CPU time per request and its own handling time, where the run measured
    them."""
    cpu = summary.get("server_cpu_ms")
    text = f", server CPU {cpu:.2f} ms/req" if cpu is not None else ""
    if summary.get("handler_p99_ms") is not None:
        text += (
            f", handled in p50 {summary['handler_p50_ms']:.1f} / "
            f"p99 {summary['handler_p99_ms']:.1f} ms"
        )
    return text


def rows(results: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    for point in results.get("serving", []):
        size, serve, raw = point["size"], point["serve"], point["raw"]
        label = _size(size)
        health = serve["healthz"]
        out.append(
            (
                "serving",
                f"{label} /healthz",
                f"{health['qps']:.0f} qps, p50 {health['p50_ms']:.1f} ms, "
                f"p99 {health['p99_ms']:.1f} ms, {health['errors']} err{_server_side(health)}",
                "",
                "",
                "",
                "-",
            )
        )
        for mode in ("recommendations", "similar", "search"):
            m = serve[mode]
            ratio = m["qps"] / health["qps"] if health["qps"] else 0.0
            target, ok = "", None
            if mode == "recommendations":
                want = 0.25 if size >= 1_000_000 else 0.35 if size >= 100_000 else None
                target = "p99 <= 25 ms" + (f", >= {want:.0%} of healthz" if want else "")
                ok = m["p99_ms"] <= 25 and (want is None or ratio >= want) and m["errors"] == 0
            out.append(
                (
                    "serving",
                    f"{label} {mode}",
                    f"{m['qps']:.0f} qps, p50 {m['p50_ms']:.1f} ms, p99 {m['p99_ms']:.1f} ms, "
                    f"{m['errors']} err{_server_side(m)}",
                    f"healthz {health['qps']:.0f} qps",
                    f"{ratio:.0%}",
                    target,
                    _holds(ok),
                )
            )
        out.append(
            (
                "serving",
                f"{label} in-process search (1 thread)",
                f"VectorIndex.search p50 {raw['search_p50_ms']:.2f} ms, "
                f"{raw['search_qps_1thread']:.0f} qps",
                f"raw FAISS p50 {raw['faiss_p50_ms']:.2f} ms, {raw['faiss_qps_1thread']:.0f} qps",
                f"HTTP recs {serve['recommendations']['qps'] / raw['faiss_qps_1thread']:.0%}",
                "",
                "-",
            )
        )
        rec = point["recall"]
        out.append(
            (
                "recall",
                f"{label} recall@10, seen excluded ({point['reindex']['index_kind']})",
                f"{rec['recall_at_10']:.3f} (min {rec['recall_min']:.1f})",
                "exact search",
                "",
                ">= 0.95",
                _holds(rec["recall_at_10"] >= 0.95),
            )
        )
        mem, index_mib = serve["memory"], point["reindex"]["index_mib"]
        limit = 1.5 * index_mib + 1024
        out.append(
            (
                "memory",
                f"{label} server, {mem['processes'] - 1} workers",
                f"PSS {mem['pss_mib']:.0f} MiB (RSS sum {mem['rss_mib']:.0f} MiB)",
                f"index file {index_mib:.0f} MiB",
                f"{mem['pss_mib'] / index_mib:.2f}x",
                f"<= {limit:.0f} MiB" if size >= 1_000_000 else "",
                _holds(mem["pss_mib"] <= limit) if size >= 1_000_000 else "-",
            )
        )
        ri = point["reindex"]
        if ri["build_s"] is not None:
            out.append(
                (
                    "reindex",
                    f"{label} build index ({ri['index_kind']})",
                    f"{ri['build_s']:.1f} s",
                    "",
                    "",
                    "",
                    "-",
                )
            )
        out.append(
            (
                "reindex",
                f"{label} unchanged catalogue",
                f"{ri['unchanged_s']:.2f} s, embedded {ri['unchanged_embedded']}, "
                f"rebuilt {'yes' if ri['unchanged_rebuilt'] else 'no'}",
                f"build {ri['build_s']:.1f} s" if ri["build_s"] is not None else "",
                "",
                "no embedding, seconds",
                _holds(
                    ri["unchanged_embedded"] == 0
                    and not ri["unchanged_rebuilt"]
                    and ri["unchanged_s"] < 10
                ),
            )
        )
    serving = results.get("serving", [])
    if len(serving) >= 2:
        first, last = serving[0], serving[-1]
        grow = last["size"] / first["size"]
        lat = (
            last["serve"]["recommendations"]["p50_ms"] / first["serve"]["recommendations"]["p50_ms"]
        )
        out.append(
            (
                "scale",
                f"recs p50 {_size(first['size'])} -> {_size(last['size'])}",
                f"x{lat:.2f} latency",
                f"x{grow:.0f} items",
                "",
                "far slower than items",
                _holds(lat < grow**0.5),
            )
        )
    for row in results.get("ingest", {}).get("rows", []):
        out.append(tuple(row))  # type: ignore[arg-type]
    for row in results.get("embedding", {}).get("rows", []):
        out.append(tuple(row))  # type: ignore[arg-type]
    return out


def render(results: dict[str, Any], *, markdown: bool = False) -> str:
    table = [HEADER, *rows(results)]
    if markdown:
        lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
        lines += ["| " + " | ".join(row) + " |" for row in table[1:]]
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in table) for i in range(len(HEADER))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _preamble(results: dict[str, Any]) -> str:
    m = results["machine"]
    return (
        f"`{results['command']}` ({results['mode']}), {results['started_at']}, commit "
        f"{m['commit']}: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Python "
        f"{m['python']}, load average {m['load_average_at_start']:.1f} at start. Serving: "
        f"`driftrec serve --workers {results['workers']}`, concurrency "
        f"{results['concurrency']}, {results['duration_s']:.0f} s per point."
    )


def write_results(results: dict[str, Any]) -> None:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "latest.json").write_text(json.dumps(results, indent=2, default=str))
    (RESULTS_DIR / "latest.md").write_text(
        _preamble(results) + "\n\n" + render(results, markdown=True) + "\n"
    )
    if len(results.get("serving", [])) >= 1:
        plot_scale(results, RESULTS_DIR / "scale.png")


def plot_scale(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = results["serving"]
    sizes = [p["size"] for p in points]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for mode, colour in (("recommendations", "C0"), ("similar", "C1"), ("search", "C2")):
        ax.plot(
            sizes,
            [p["serve"][mode]["p50_ms"] for p in points],
            "o-",
            color=colour,
            label=f"{mode} p50",
        )
        ax.plot(
            sizes,
            [p["serve"][mode]["p99_ms"] for p in points],
            "o--",
            color=colour,
            alpha=0.6,
            label=f"{mode} p99",
        )
    ax.plot(
        sizes,
        [p["serve"]["healthz"]["p50_ms"] for p in points],
        "s:",
        color="grey",
        label="/healthz p50 (reference)",
    )
    ax.plot(
        sizes,
        [p["raw"]["faiss_p50_ms"] for p in points],
        "^:",
        color="black",
        label="raw FAISS p50, in-process",
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("catalogue size (items)")
    ax.set_ylabel("latency (ms), concurrency 8, 2 workers")
    ax.set_title("driftrec latency vs catalogue size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
