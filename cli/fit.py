"""`probe fit`: fit whole hyperparameter grids of linear heads and report worst-group accuracy.

A thin layer over :func:`probe.api.fit_grid`. Its grid flags come from the method
registry and its settings flags from ``probe.train.settings``: a new method or a new
setting appears here, with its help, without an edit to this module.
"""

from __future__ import annotations

import contextlib
import shlex
import sys
from dataclasses import MISSING
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.app import app
from cli.options import OptionSpec, with_options
from cli.signals import Terminated, exit_code, sigterm_as_interrupt
from probe.methods import COMMON, all_options, all_params, fill_help, get_method, method_names
from probe.methods.protocols import PROTOCOLS, protocol_names
from probe.records.grid import RANGE_HELP, format_values
from probe.train.settings import DTYPES, setting_kind, user_settings

#: the bare command's comparison: ERM, its group-balanced form (the strong simple baseline a
#: reviewer asks for first) and CMA
DEFAULT_METHODS = "erm,reweight,cma"


def grid_option(name: str) -> OptionSpec:
    """A grid flag: the declaration's help, which methods take it, and their default grids."""
    pairs = all_params()[name]
    takers = [m.name for m, _ in pairs]
    if name in COMMON:
        scope = "" if len(takers) >= len(method_names()) - 1 else f" ({', '.join(takers)})"
        text = f"{COMMON[name].help}{scope}"
    elif len(pairs) == 1:
        text = pairs[0][1].help
    else:
        text = " ".join(f"{m.name}: {p.help}" for m, p in pairs)
    defaults: dict[str, list[str]] = {}
    for m, p in pairs:
        defaults.setdefault(format_values(p.default_grid), []).append(m.name)
    if len(defaults) == 1:
        text += f" Default {next(iter(defaults))}."
    else:
        text += " Default: " + "; ".join(f"{', '.join(ms)} {v}" for v, ms in defaults.items()) + "."
    what = "a comma list (a grid dimension)" if pairs[0][1].kind is str else f"Grid flag: {RANGE_HELP}"
    return OptionSpec(name, f"{text} {what}.", metavar="VALUES")


def grid_options() -> list[OptionSpec]:
    names = list(all_params())
    own = [n for n in names if n not in COMMON]
    return [grid_option(n) for n in own + [n for n in COMMON if n in names]]


def setting_options() -> list[OptionSpec]:
    """The settings' flags (help lists filled from the registries), then the options that
    methods and preprocessing kinds own."""
    out = []
    for f in user_settings():
        kind = setting_kind(f)
        default = "" if f.default in (None, MISSING) else f" Default {f.default}."
        out.append(OptionSpec(f.name, f"{fill_help(f.metadata['help'])}{default}", kind=kind))
    for name, (_, p) in all_options().items():
        default = "" if p.default is None else f" Default {p.default}."
        out.append(OptionSpec(name, f"{p.help}{default}", kind=p.kind))
    return out


class _Progress:
    """Adapter from the trainer's step callback to a rich progress bar."""

    def __init__(self, bar: Any) -> None:
        self.bar, self.task = bar, bar.add_task("fitting", total=None)

    def total(self, n: int) -> None:
        self.bar.update(self.task, total=n)

    def advance(self, n: int) -> None:
        self.bar.advance(self.task, n)


def _protocol_help() -> str:
    names = "; ".join(f"{n}: {PROTOCOLS[n].summary}" for n in protocol_names())
    return (f"A named protocol that sets methods, grids, seeds and settings for the file's dataset ({names}); "
            "PROTOCOL:DATASET takes that dataset's choices for a file of any dataset (cma-paper:waterbirds). "
            "Any flag given as well overrides it (the steps, the evaluation interval and the anneal grid then "
            "follow the effective values); the run records both.")


def _method_help() -> str:
    lines = "; ".join(get_method(m).summary for m in method_names())
    return f"Comma list of methods, each with its own grid: {lines}. Flags a method does not use are ignored for it."


@app.command("fit")
@with_options(grid_options(), into="grid_text")
@with_options(setting_options(), into="settings")
def fit(
    features: Annotated[Path, typer.Argument(help="Feature file written by `probe extract` (.h5).")],
    grid_text: dict[str, str],
    settings: dict[str, Any],
    method: Annotated[str | None, typer.Option(help=_method_help() + f" Default: {DEFAULT_METHODS}, or the protocol's.",
                                               show_default=False)] = None,
    protocol: Annotated[str | None, typer.Option(help=_protocol_help(), show_default=False)] = None,
    out: Annotated[Path | None, typer.Option(help="Run folder to write (results.jsonl, summary.json, heads/). "
                                                  "Default: runs/<feature file name>.")] = None,
    device: Annotated[str, typer.Option(help="auto (CUDA when available), cpu, cuda or cuda:N.")] = "auto",
    dtype: Annotated[str, typer.Option(help=f"{' or '.join(DTYPES)}.")] = "float32",
    allow_incomplete: Annotated[bool, typer.Option(help="Fit on an unfinished extraction (its rows so far).")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace the run already in --out.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no report.")] = False,
) -> None:
    """Fit each method's hyperparameter grid in one batched run, select by validation
    worst-group accuracy, and write RUN_DIR/results.jsonl, summary.json and heads/.

    Grid flags take a value, a comma list, or a range START:STOP:NUM (NUM evenly spaced
    values, both ends included) or START:STOP:NUM:log (geometric), e.g. --alpha
    1e1:1e5:5:log --seed 0:4:5. The product of a method's values is its grid.

    Resumable: every finished cohort (seed × preprocessing) is kept in RUN_DIR/.partial;
    after a crash, a kill or a pre-emption, the same command fits only what is left and
    writes the same run. Ctrl-C or SIGTERM stops cleanly: the configurations already
    finished are written (unless --overwrite is replacing a complete run, which then stays
    as it was), and the command exits with code 130 (SIGINT) or 143 (SIGTERM).
    """
    from base.errors import UserError

    params = all_params()
    grid = {name: params[name][0][1].parse(text) for name, text in grid_text.items()}
    run_dir = out if out is not None else Path("runs") / features.stem
    if out is None:
        if run_dir.parent.exists() and not run_dir.parent.is_dir():
            raise UserError(f"`out` defaults to {run_dir}, but {run_dir.parent} is a file here; pass `out`")
        try:
            run_dir.parent.mkdir(exist_ok=True)
        except OSError as exc:
            raise UserError(f"`out` defaults to {run_dir}, but the folder {run_dir.parent.resolve()} cannot be "
                            f"created here ({exc.strerror}); pass `out`") from exc
    _check_feature_file(features)
    _check_flags(method, settings, dtype)
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from probe.pipeline import fit_grid

    bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
                   TimeElapsedColumn(), TimeRemainingColumn(), disable=quiet, transient=True)
    command = None if sys.argv[1:2] == ["fit"] else _command_line(features, method, run_dir, grid_text,
                                                                  {**settings, "protocol": protocol})
    try:
        with sigterm_as_interrupt(), bar if not quiet else contextlib.nullcontext():
            fit_grid(features, method if method is not None or protocol else DEFAULT_METHODS, grid, run_dir,
                     overwrite=overwrite, allow_incomplete=allow_incomplete, device=device, dtype=dtype,
                     progress=None if quiet else _Progress(bar), command=command, protocol=protocol,
                     notify=None if quiet else lambda msg: bar.console.print(f"probe fit: {msg}", markup=False,
                                                                              highlight=False),
                     **settings)
    except KeyboardInterrupt as exc:
        print(f"probe fit: {_interrupted(exc, run_dir)}", file=sys.stderr)
        raise typer.Exit(exit_code(exc)) from None
    _report(run_dir, quiet)


def _check_feature_file(features: Path) -> None:
    """A path that is not a feature file at all (missing, a folder, unreadable, not HDF5,
    damaged, another schema) is refused with the reader's own message before the fit's
    imports (torch: two seconds of every mistyped command). Only the file's header is read
    here; :func:`features.store.read_features` checks the rest (and all of this again)."""
    from features.store import check_schema, malformed_is_user_error, open_feature_file

    with open_feature_file(features) as h5, malformed_is_user_error(features):
        check_schema(h5, features)


def _check_flags(method: str | None, settings: dict[str, Any], dtype: str) -> None:
    """Method names and setting values refused before the fit's imports, as the feature file
    is: the fit checks them again, with the protocol's values and on the real device."""
    from probe.methods import checked_settings, parse_methods
    from probe.train.settings import check_dtype

    check_dtype(dtype)
    if method is not None:
        parse_methods(method)
    checked_settings(**settings)


def _interrupted(exc: KeyboardInterrupt, run_dir: Path) -> str:
    what = "terminated" if isinstance(exc, Terminated) else "interrupted"
    kept = getattr(exc, "probe_kept", 0)
    if getattr(exc, "probe_written", None):
        return f"{what}; {kept} finished configurations are in {run_dir}; rerun the same command to finish the fit"
    if kept:
        return (f"{what}; the previous run in {run_dir} is unchanged; {kept} finished configurations are kept in "
                f"{run_dir}/.partial, rerun the same command to finish the fit")
    return f"{what}; no configuration had finished"


def _command_line(features: Path, method: str, run_dir: Path, grid_text: dict[str, str],
                  settings: dict[str, Any]) -> str:
    """Called in-process (not as `probe fit ...`, whose provenance records the command
    as typed): an equivalent command rebuilt from the flags given."""
    args = ["probe", "fit", str(features), *(["--method", method] if method else []), "--out", str(run_dir)]
    for name, value in {**grid_text, **settings}.items():
        if value is None:
            continue
        args += ["--" + name.replace("_", "-"), str(value)]
    return shlex.join(args)


def _report(run_dir: Path, quiet: bool) -> None:
    """The comparison table and where the files are; nothing with --quiet (the files hold it all)."""
    if quiet:
        return
    from cli.console import show
    from probe.reports.formats.terminal import fit_summary

    show(fit_summary(run_dir))
