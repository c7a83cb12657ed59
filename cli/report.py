"""`probe report RUN_DIR [RUN_DIR ...]`: one comparison over run folders, tables and figures."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path

import typer

from cli.app import app
from probe.reports.formats import format_names, get_format
from probe.reports.registry import LAYOUTS

# The choices and their help come from the format registry: a new format needs no change here.
FormatChoice = Enum("FormatChoice", {name: name for name in format_names()}, type=str)
LayoutChoice = Enum("LayoutChoice", {name: name for name in LAYOUTS}, type=str)
LAYOUT_HELP = "; ".join(f"{name}: {text} (formats: {', '.join(f for f in format_names() if name in get_format(f).layouts)})"
                        for name, text in LAYOUTS.items()) + "."
FORMAT_HELP = (
    "; ".join(f"{name}: {get_format(name).help}" for name in format_names())
    + ". Human formats show percent with one decimal, mean ± std over seeds."
)


@app.command("report")
def report(
    run_dirs: list[Path] = typer.Argument(
        ...,
        metavar="RUN_DIR",
        help="Run folders written by `probe fit --out`. Several give ONE comparison table; "
        "a method present in several folders is labelled with its folder name.",
        show_default=False,
    ),
    fmt: FormatChoice = typer.Option(
        FormatChoice("terminal"),
        "--format",
        "-f",
        help=FORMAT_HELP,
        case_sensitive=False,
    ),
    layout: LayoutChoice = typer.Option(LayoutChoice("standard"), "--layout", help=LAYOUT_HELP, case_sensitive=False),
    out: Path | None = typer.Option(
        None,
        "--out",
        "-o",
        metavar="FILE",
        help="Write the report to FILE (atomically: the old file or the complete new one) "
        "instead of printing it. Its folder must exist. A character device or a FIFO (/dev/stdout, "
        "a named pipe, a shell's >(...)) is written through and stays what it is.",
        show_default=False,
    ),
    plots: Path | None = typer.Option(
        None,
        "--plots",
        metavar="DIR",
        help="Also write PNG figures into DIR (created if missing): validation and test WGA "
        "heatmaps over the pair of hyperparameters each method declares (α × β for CMA), per-group test accuracy bars, "
        "loss/penalty/accuracy curves of each selected configuration, and the bound terms (the "
        "training domains' largest gradient, Hessian and third-derivative distances) along training.",
        show_default=False,
    ),
) -> None:
    """Compare methods across run folders: each at its configuration selected on validation
    worst-group accuracy (WGA), with test WGA, plain accuracy (Acc), the train-weighted average
    (Waterbirds papers' "average"), the group-mean average, per-group accuracies, and the grid
    around each selection (one hyperparameter varied at a time).
    """
    from base.io import write_output_text
    from cli.console import as_text, show
    from probe.reports import build_report, render
    from probe.reports.runfolder import check_output_file
    from probe.study.jobs import expand_studies

    if out is not None:
        check_output_file(out, run_dirs)
    built = build_report(expand_studies(run_dirs))
    rendered = render(built, fmt.value, layout.value)
    written: list[Path] = []
    if out is not None:
        write_output_text(out, as_text(rendered))
        written.append(out)
    else:
        show(rendered)
    if plots is not None:
        from probe.reports.plots import write_plots  # matplotlib only when figures are wanted

        written += write_plots(built, plots)
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
