"""`probe fit`: fit whole hyperparameter grids of linear heads and report worst-group accuracy.

A thin layer over :func:`probe.api.fit_grid`: parse and check the flags, show a
progress bar, print the short report.
"""

from __future__ import annotations

import contextlib
import shlex
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from base.errors import UserError
from cli.app import app
from probe.grid import (
    COMMON_DEFAULTS,
    DEFAULT_BATCH_SIZE,
    DEFAULT_STEPS,
    RANGE_HELP,
    defaults_help,
    parse_values,
)

GRID_FLAGS = {  # flag -> (hyperparameter, type, minimum)
    "--alpha": ("alpha", float, 0.0), "--beta": ("beta", float, 0.0), "--lam": ("lam", float, 0.0),
    "--eta": ("eta", float, 0.0), "--anneal": ("anneal", int, 0), "--seed": ("seed", int, 0),
    "--lr": ("lr", float, 0.0), "--weight-decay": ("weight_decay", float, 0.0),
}
PREPROCESS = ("none", "standardize", "l2", "pca", "isr-mean")
G = f"Grid flag: {RANGE_HELP}."


def _default(name: str) -> str:
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in COMMON_DEFAULTS[name])


class _Progress:
    """Adapter from the trainer's step callback to a rich progress bar."""

    def __init__(self, bar: Any) -> None:
        self.bar, self.task = bar, bar.add_task("fitting", total=None)

    def total(self, n: int) -> None:
        self.bar.update(self.task, total=n)

    def advance(self, n: int) -> None:
        self.bar.advance(self.task, n)


class _Silent:
    def total(self, n: int) -> None:
        pass

    def advance(self, n: int) -> None:
        pass


@app.command("fit")
def fit(
    features: Annotated[Path, typer.Argument(help="Feature file written by `probe extract` (.h5).")],
    method: Annotated[str, typer.Option(help=(
        "Comma list of methods, each with its own grid: erm; cma (--alpha, --beta); reweight "
        "(group-balanced ERM); irm (IRMv1, --lam); vrex (--lam); fishr (--lam); groupdro (--eta); dfr "
        "(Deep Feature Reweighting: L1 logistic regression on group-balanced validation subsets, C tuned "
        "on half of validation; one head per --seed). Flags a method does not use are ignored for it."))] = "erm,cma",
    out: Annotated[Path | None, typer.Option(help="Run folder to write (results.jsonl, summary.json, heads/). "
                                                  "Default: runs/<feature file name>.")] = None,
    alpha: Annotated[str | None, typer.Option(help=f"CMA gradient-variance weight α (0: Hessian-only). {G} "
                                                   f"{defaults_help('alpha')}")] = None,
    beta: Annotated[str | None, typer.Option(help=f"CMA Hessian-variance weight β (0: gradient-only). {G} "
                                                  f"{defaults_help('beta')}")] = None,
    lam: Annotated[str | None, typer.Option(help=f"Penalty weight λ of irm, vrex and fishr. {G} "
                                                 f"{defaults_help('lam')}")] = None,
    eta: Annotated[str | None, typer.Option(help=f"GroupDRO step size η of its exponentiated-gradient domain "
                                                 f"weights. {G} {defaults_help('eta')}")] = None,
    anneal: Annotated[str | None, typer.Option(help=f"Steps with the penalties off (cma, irm, vrex, fishr); "
                                                    f"the optimizer state of those heads is reset when they switch "
                                                    f"on, and only later checkpoints are kept. {G} Default "
                                                    f"{_default('anneal')}.")] = None,
    seed: Annotated[str | None, typer.Option(help=f"Seeds (minibatch order; dfr: its subsampling). Results are "
                                                  f"reported as mean ± std over seeds. {G} Default "
                                                  f"{_default('seed')}.")] = None,
    lr: Annotated[str | None, typer.Option(help=f"Learning rate. {G} Default {_default('lr')}.")] = None,
    weight_decay: Annotated[str | None, typer.Option(help=(
        f"L2 strength λ on the weights (not the bias): the loss gets + λ/2‖W‖². sklearn's "
        f"LogisticRegression(C) is the same model at C = 1/(λ·N_train), or 2/(λ·N_train) for two classes. {G} "
        f"Default {_default('weight_decay')}."))] = None,
    preprocess: Annotated[str, typer.Option(help=(
        "Comma list (a grid dimension) of feature preprocessing, fitted on train: none, standardize (z-score), "
        "l2 (unit rows), pca (--pca-dim components), isr-mean (project out the class-conditional "
        "spurious-attribute mean differences, ISR-Mean of Wang et al. 2022, then z-score)."))] = "standardize",
    pca_dim: Annotated[int, typer.Option(help="Components kept by --preprocess pca.", min=1)] = 64,
    steps: Annotated[str, typer.Option(help=f"Optimisation steps per configuration (one value). Default "
                                            f"{DEFAULT_STEPS}.")] = str(DEFAULT_STEPS),
    batch_size: Annotated[str, typer.Option(help=(
        "Rows per domain-balanced minibatch, about B/K rows of each of the K domains (one value); 0 or ≥ the "
        f"train rows: full batch. Default {DEFAULT_BATCH_SIZE}."))] = str(DEFAULT_BATCH_SIZE),
    optimizer: Annotated[str, typer.Option(help="adam, or sgd (momentum 0.9).")] = "adam",
    ce_weighting: Annotated[str | None, typer.Option(help=(
        "Cross-entropy weighting over the balanced batches: pooled (natural-distribution mean via importance "
        "weights; default of erm, cma, irm, vrex, fishr) or domain (mean of per-domain means; default of "
        "reweight). GroupDRO always uses its own weights. Default: each method's."))] = None,
    eval_every: Annotated[int, typer.Option(help="Evaluate on validation every N steps; each head keeps its "
                                                 "best checkpoint by the --select score.", min=1)] = 50,
    patience: Annotated[int, typer.Option(help="Stop a head after N evaluations without improvement "
                                               "(0: never).", min=0)] = 0,
    domain: Annotated[str, typer.Option(help="Column defining the domains of the balanced batches and the "
                                             "penalties: group, a (spurious attribute) or y.")] = "group",
    select: Annotated[str, typer.Option(help="Checkpoint and model selection: val_wga (validation worst-group "
                                             "accuracy, mean over seeds) or val_acc.")] = "val_wga",
    normalize: Annotated[str, typer.Option(help="CMA scaling: none (the definitions) or dC (the authors' "
                                                "linear-probing scaling, for their published α, β).")] = "none",
    hessian_method: Annotated[str, typer.Option(help="CMA Hessian-variance form: auto, kernel, binary, "
                                                     "direct (all exact).")] = "auto",
    device: Annotated[str, typer.Option(help="auto (CUDA when available), cpu, cuda or cuda:N.")] = "auto",
    dtype: Annotated[str, typer.Option(help="float32 or float64.")] = "float32",
    allow_incomplete: Annotated[bool, typer.Option(help="Fit on an unfinished extraction (its rows so far).")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace the run already in --out.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no report.")] = False,
) -> None:
    """Fit each method's hyperparameter grid in one batched run, select by validation
    worst-group accuracy, and write RUN_DIR/results.jsonl, summary.json and heads/.

    Grid flags (--alpha --beta --lam --eta --anneal --seed --lr --weight-decay) take a
    value, a comma list, or a range START:STOP:NUM (NUM evenly spaced values, both ends
    included) or START:STOP:NUM:log (geometric), e.g. --alpha 1e1:1e5:5:log --seed 0:4:5.
    The product of a method's values is its grid. Ctrl-C stops cleanly: configurations
    of the cohorts (seed × preprocessing) already finished are written, unfinished ones
    are left out, and the command exits with code 130.
    """
    from probe.api import fit_grid

    values = {"--alpha": alpha, "--beta": beta, "--lam": lam, "--eta": eta, "--anneal": anneal, "--seed": seed,
              "--lr": lr, "--weight-decay": weight_decay}
    grid: dict[str, list[Any]] = {}
    for flag, text in values.items():
        if text is not None:
            name, kind, minimum = GRID_FLAGS[flag]
            grid[name] = parse_values(flag, text, kind, minimum)
    grid["preprocess"] = [p.strip() for p in preprocess.split(",") if p.strip()]
    for p in grid["preprocess"] or [""]:
        _choice("--preprocess", p, PREPROCESS)
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
    if ce_weighting is not None:
        _choice("--ce-weighting", ce_weighting, ("pooled", "domain"))
    run_dir = out if out is not None else Path("runs") / features.stem
    if out is None:
        run_dir.parent.mkdir(exist_ok=True)
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
                   TimeElapsedColumn(), TimeRemainingColumn(), disable=quiet, transient=True)
    try:
        with bar if not quiet else contextlib.nullcontext():
            fit_grid(features, method, grid, run_dir, overwrite=overwrite, allow_incomplete=allow_incomplete,
                     device=device, dtype=dtype, progress=_Silent() if quiet else _Progress(bar),
                     command=_command_line(features, method, run_dir, values, preprocess, n_steps[0], n_batch[0]),
                     steps=n_steps[0], batch_size=n_batch[0], optimizer=optimizer, eval_every=eval_every,
                     patience=patience, domain=domain, select=select, ce_weighting=ce_weighting,
                     normalize=None if normalize == "none" else normalize, hessian_method=hessian_method,
                     pca_dim=pca_dim)
    except KeyboardInterrupt as exc:
        written = getattr(exc, "probe_written", None)
        where = f"finished configurations are in {written}" if written else "no configuration had finished"
        print(f"probe fit: interrupted; {where}", file=sys.stderr)
        raise typer.Exit(130) from None
    _report(run_dir, quiet)


def _command_line(features: Path, method: str, run_dir: Path, grid_values: dict[str, str | None],
                  preprocess: str, steps: int, batch_size: int) -> str | None:
    """None when run as `probe fit ...` (provenance then records the command as
    typed); otherwise (called in-process) an equivalent one rebuilt from the main flags."""
    if sys.argv[1:2] == ["fit"]:
        return None
    args = ["probe", "fit", str(features), "--method", method, "--out", str(run_dir)]
    args += [x for flag, text in grid_values.items() if text is not None for x in (flag, text)]
    args += ["--preprocess", preprocess, "--steps", str(steps), "--batch-size", str(batch_size)]
    return shlex.join(args)


def _report(run_dir: Path, quiet: bool) -> None:
    """The comparison table and where the files are; nothing with --quiet (the files hold it all)."""
    if quiet:
        return
    from cli.console import show
    from probe.reports.formats.terminal import fit_summary

    show(fit_summary(run_dir))


def _choice(flag: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise UserError(f"{flag} {value!r} is not one of: {', '.join(options)}")
