"""`probe report RUN_DIR [RUN_DIR ...]`: one comparison over run folders, tables and figures."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from cli.app import app


class Format(str, Enum):
    terminal = "terminal"
    markdown = "markdown"
    csv = "csv"
    json = "json"
    latex = "latex"


@app.command("report")
def report(
    run_dirs: list[Path] = typer.Argument(
        ...,
        metavar="RUN_DIR",
        help="Run folders written by `probe fit --out`. Several give ONE comparison table; "
        "a method present in several folders is labelled with its folder name.",
        show_default=False,
    ),
    fmt: Format = typer.Option(
        Format.terminal,
        "--format",
        "-f",
        help="terminal: rich tables (comparison, per-group, grid around each selection); "
        "markdown: the same as Markdown; csv: one row per method (comparison and per-group test "
        "accuracies), fractions, mean and std in separate columns; json: everything, fractions in [0, 1]; "
        "latex: booktabs comparison and per-group tables for a paper (best test WGA bold). "
        "Human formats show percent with one decimal, mean ± std over seeds.",
        case_sensitive=False,
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        "-o",
        metavar="FILE",
        help="Write the report to FILE (atomically: the old file or the complete new one) "
        "instead of printing it. Its folder must exist.",
        show_default=False,
    ),
    plots: Path | None = typer.Option(
        None,
        "--plots",
        metavar="DIR",
        help="Also write PNG figures into DIR (created if missing): validation and test WGA "
        "heatmaps over alpha × beta for methods with both, per-group test accuracy bars, "
        "and loss/penalty/accuracy curves of each selected configuration.",
        show_default=False,
    ),
) -> None:
    """Compare methods across run folders: each at its configuration selected on validation
    worst-group accuracy (WGA), with test WGA, plain accuracy (Acc), the train-weighted average
    (Waterbirds papers' "average"), the group-mean average, per-group accuracies, and the grid
    around each selection (one hyperparameter varied at a time).
    """
    import sys

    from probe.report import write_report

    written = write_report(run_dirs, fmt=fmt.value, out=out, plots=plots)
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
