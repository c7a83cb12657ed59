"""`probe fit`: fit whole hyperparameter grids of linear heads and report worst-group accuracy."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated

import typer

from cli.main import app
from probe.errors import UserError
from probe.grid import RANGE_HELP, parse_values

GRID_FLAGS = {  # flag -> (hyperparameter, type, minimum)
    "--alpha": ("alpha", float, 0.0), "--beta": ("beta", float, 0.0), "--lam": ("lam", float, 0.0),
    "--eta": ("eta", float, 0.0), "--anneal": ("anneal", int, 0), "--seed": ("seed", int, 0),
    "--lr": ("lr", float, 0.0), "--weight-decay": ("weight_decay", float, 0.0),
}
G = f"Grid flag: {RANGE_HELP}."


class _Progress:
    """Adapter from the trainer's step callback to a rich progress bar."""

    def __init__(self, bar) -> None:
        self.bar, self.task = bar, bar.add_task("fitting", total=None)

    def total(self, n: int) -> None:
        self.bar.update(self.task, total=n)

    def advance(self, n: int) -> None:
        self.bar.advance(self.task, n)


@app.command("fit")
def fit(
    features: Annotated[Path, typer.Argument(help="Feature file written by `probe extract` (.h5).")],
    method: Annotated[str, typer.Option(help="Comma list of methods: erm, cma, reweight, irm, vrex, fishr, "
                                             "groupdro, dfr (Deep Feature Reweighting: L1 logistic regression "
                                             "on group-balanced validation subsets). Each gets its own grid.")] = "erm,cma",
    out: Annotated[Path | None, typer.Option(help="Run folder to write (results.jsonl, summary.json, heads/). "
                                                  "Default: runs/<feature file name>.")] = None,
    alpha: Annotated[str | None, typer.Option(help=f"CMA gradient-variance weight α. {G} Default 1e2,1e3,1e4.")] = None,
    beta: Annotated[str | None, typer.Option(help=f"CMA Hessian-variance weight β. {G} Default 1e1,1e2,1e3.")] = None,
    lam: Annotated[str | None, typer.Option(help=f"Penalty weight λ of irm, vrex and fishr. {G}")] = None,
    eta: Annotated[str | None, typer.Option(help=f"GroupDRO step size η of its group weights. {G}")] = None,
    anneal: Annotated[str | None, typer.Option(help=f"Steps before penalties switch on (optimizer state is "
                                                    f"reset then). {G} Default 0.")] = None,
    seed: Annotated[str | None, typer.Option(help=f"Seeds (batch order). {G} Default 0.")] = None,
    lr: Annotated[str | None, typer.Option(help=f"Learning rate. {G} Default 1e-2.")] = None,
    weight_decay: Annotated[str | None, typer.Option(help=f"L2 weight decay λ on the weights (not the bias) "
                                                          f"added to the mean CE as λ/2‖w‖²; sklearn's C = "
                                                          f"1/(λ·N_train). {G} Default 1e-4.")] = None,
    preprocess: Annotated[str, typer.Option(help="Comma list of: none, standardize, l2, pca, isr-mean "
                                                 "(fitted on train).")] = "standardize",
    pca_dim: Annotated[int, typer.Option(help="Components kept by --preprocess pca.", min=1)] = 64,
    steps: Annotated[str, typer.Option(help="Optimisation steps per configuration (one value).")] = "1000",
    batch_size: Annotated[str, typer.Option(help="Rows per domain-balanced minibatch (one value); 0 or ≥ "
                                                 "train rows means full batch.")] = "512",
    optimizer: Annotated[str, typer.Option(help="adam or sgd (momentum 0.9).")] = "adam",
    eval_every: Annotated[int, typer.Option(help="Evaluate validation every N steps (checkpoint kept per "
                                                 "head: best validation score).", min=1)] = 50,
    patience: Annotated[int, typer.Option(help="Stop a head after N evaluations without improvement "
                                               "(0: never).", min=0)] = 0,
    domain: Annotated[str, typer.Option(help="Column defining the penalties' domains: group, a or y.")] = "group",
    select: Annotated[str, typer.Option(help="Model selection: val_wga (validation worst-group accuracy) "
                                             "or val_acc.")] = "val_wga",
    normalize: Annotated[str, typer.Option(help="CMA scaling: none (definitions) or dC (the authors' "
                                                "linear-probing scaling, for their published α, β).")] = "none",
    hessian_method: Annotated[str, typer.Option(help="CMA Hessian-variance form: auto, kernel, binary, "
                                                     "direct.")] = "auto",
    device: Annotated[str, typer.Option(help="auto (CUDA when available), cpu, cuda or cuda:N.")] = "auto",
    dtype: Annotated[str, typer.Option(help="float32 or float64.")] = "float32",
    allow_incomplete: Annotated[bool, typer.Option(help="Fit on an unfinished extraction.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run folder.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or report.")] = False,
) -> None:
    """Fit each method's hyperparameter grid in one batched run, select by validation
    worst-group accuracy, and write RUN_DIR/results.jsonl, summary.json and heads/."""
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from probe.api import fit_grid

    values = {"--alpha": alpha, "--beta": beta, "--lam": lam, "--eta": eta, "--anneal": anneal, "--seed": seed,
              "--lr": lr, "--weight-decay": weight_decay}
    grid = {}
    for flag, text in values.items():
        if text is not None:
            name, kind, minimum = GRID_FLAGS[flag]
            grid[name] = parse_values(flag, text, kind, minimum)
    grid["preprocess"] = [p.strip() for p in preprocess.split(",") if p.strip()]
    n_steps = parse_values("--steps", steps, int, 1)
    n_batch = parse_values("--batch-size", batch_size, int, 0)
    for flag, vals in (("--steps", n_steps), ("--batch-size", n_batch)):
        if len(vals) != 1:  # they shape the batch stream, which a cohort shares
            raise UserError(f"{flag} takes one value per call, got {len(vals)}; run probe fit once per value")
    _choice("--optimizer", optimizer, ("adam", "sgd"))
    _choice("--select", select, ("val_wga", "val_acc"))
    _choice("--normalize", normalize, ("none", "dC"))
    _choice("--hessian-method", hessian_method, ("auto", "kernel", "binary", "direct"))
    _choice("--dtype", dtype, ("float32", "float64"))
    _choice("--domain", domain, ("group", "a", "y"))
    for p in grid["preprocess"]:
        _choice("--preprocess", p, ("none", "standardize", "l2", "pca", "isr-mean"))
    methods = [m.strip() for m in method.split(",") if m.strip()]
    run_dir = out if out is not None else Path("runs") / features.stem
    if out is None:
        run_dir.parent.mkdir(exist_ok=True)
    bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
                   TimeElapsedColumn(), TimeRemainingColumn(), disable=quiet, transient=True)
    try:
        with bar if not quiet else contextlib.nullcontext():
            fit_grid(features, methods, grid, run_dir, overwrite=overwrite, allow_incomplete=allow_incomplete,
                     device=device, dtype=dtype, progress=_Progress(bar), steps=n_steps[0], batch_size=n_batch[0],
                     optimizer=optimizer, eval_every=eval_every, patience=patience, domain=domain, select=select,
                     normalize=None if normalize == "none" else normalize, hessian_method=hessian_method,
                     pca_dim=pca_dim)
    except KeyboardInterrupt:
        print(f"probe fit: interrupted; finished configurations were written to {run_dir}", file=sys.stderr)
        raise typer.Exit(130) from None
    if not quiet:
        from probe.report import print_fit_summary

        print_fit_summary(run_dir, quiet=quiet)


def _choice(flag: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise UserError(f"{flag} {value!r} is not one of: {', '.join(options)}")
