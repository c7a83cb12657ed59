"""`probe hull FILE.h5`: does each evaluation split lie near the convex hull of the training domains?

Its own module (not an option of `probe info`) so the command does not depend on how
cli/extract.py lays out `info`.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from cli.app import app
from probe.domains import REGISTRY, source_names, sources_help

#: `--domain`'s choices: every registered domain source
DomainChoice = Enum("DomainChoice", {n: n for n in source_names()}, type=str)


def _domain_help() -> str:
    inferred = [n for n in source_names() if REGISTRY[n].inferred]
    return (f"Where the training domains come from: {sources_help()}."
            + (f" {', '.join(inferred)} take their default settings." if inferred else ""))


@app.command("hull")
def hull(
    file: Path = typer.Argument(..., metavar="FILE.h5", help="A feature file written by `probe extract`."),
    domain: DomainChoice = typer.Option(DomainChoice("group"), help=_domain_help()),
    splits: str = typer.Option("val,test", help="Comma list of evaluation splits to check."),
    threshold: float = typer.Option(0.2, help="Relative residual at or below which a set counts as near the "
                                              "hull (it also does when its residual is within twice its "
                                              "sampling noise)."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON instead of a table."),
    allow_incomplete: bool = typer.Option(False, help="Check an unfinished extraction (its rows so far)."),
) -> None:
    """For each evaluation split and each of its groups: the mixture of the training domains that best
    matches its feature mean and second moment (kernel mean matching with one weight per domain on
    the simplex, features z-scored on train), the residual, its sampling noise, the relative
    residual (residual / distance from the pooled training rows) and the verdict.
    """
    from base.io import json_text
    from features.store import read_features
    from probe.diagnostics.hull import hull_check
    from probe.domains import resolve

    fs = resolve(read_features(file, allow_incomplete), domain.value)
    fits = hull_check(fs, tuple(s.strip() for s in splits.split(",") if s.strip()), threshold)
    if as_json:
        typer.echo(json_text({"file": str(file), "domain": domain.value, "threshold": threshold,
                              "sets": [f.to_json() for f in fits]}, indent=2))
        return
    from rich.table import Table

    from cli.console import show

    table = Table(title=f"{file}: evaluation sets against the convex hull of the training domains ({domain.value})",
                  caption=f"weights: the mixture of training domains nearest the set's mean and second moment. "
                          f"relative: residual / distance from the pooled training rows. near: relative ≤ "
                          f"{threshold:g}, or residual ≤ 2 × noise (what an exact mixture of this size shows).",
                  caption_justify="left")
    for col in ("split", "group", "n", "weights", "residual", "noise", "relative", "verdict"):
        table.add_column(col, justify="right" if col in ("n", "residual", "noise", "relative") else "left")
    for f in fits:
        weights = ", ".join(f"{k}={v:.2f}" for k, v in f.weights.items() if v >= 0.005) or "–"
        table.add_row(f.split, f.group or "(all)", str(f.n), weights, f"{f.residual:.3g}", f"{f.noise:.3g}",
                      f"{f.relative:.2f}", "near the hull" if f.near else "OUTSIDE the hull")
    show([table])
