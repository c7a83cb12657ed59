"""`probe study STUDY.toml`: a study's jobs, run by a launcher; `--status` shows where it stands."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cli.app import app
from cli.signals import exit_code, sigterm_as_interrupt

if TYPE_CHECKING:
    from probe.study.spec import Study

LAUNCHERS = ("local", "slurm")
Launcher = Enum("Launcher", {n: n for n in LAUNCHERS}, type=str)


@app.command("study")
def study(
    file: Annotated[Path, typer.Argument(metavar="STUDY.toml", help="The study file (see the README's "
                                         "\"Studies and clusters\").", show_default=False)],
    status: Annotated[bool, typer.Option("--status", help="Show each job's state (done, running, failed, "
                                         "interrupted, waiting) and run nothing.")] = False,
    launcher: Annotated[Launcher | None, typer.Option(help="local: worker processes on this machine, one per "
                                                      "visible GPU (or --jobs); slurm: job arrays through "
                                                      "submitit. Default: the study file's, else local.",
                                                      show_default=False)] = None,
    out: Annotated[Path | None, typer.Option(help="The study folder. Default: the study file's `out`, else "
                                             "<STUDY>.study beside it.", show_default=False)] = None,
    jobs: Annotated[int | None, typer.Option("--jobs", "-j", help="local: jobs at once. Default: one per "
                                             "visible GPU, else 1.", show_default=False)] = None,
    partition: Annotated[str | None, typer.Option(help="slurm: the partition.", show_default=False)] = None,
    time: Annotated[int | None, typer.Option(help="slurm: minutes per job.", show_default=False)] = None,
    gpus: Annotated[int | None, typer.Option(help="slurm: GPUs per job.", show_default=False)] = None,
    cpus: Annotated[int | None, typer.Option(help="slurm: CPUs per job.", show_default=False)] = None,
    mem: Annotated[str | None, typer.Option(help="slurm: memory per job, e.g. 32G.", show_default=False)] = None,
    parallelism: Annotated[int | None, typer.Option(help="slurm: array jobs running at once.",
                                                    show_default=False)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No line per job started and ended.")] = False,
) -> None:
    """Run a study: every feature file × method group as its own resumable `probe extract` /
    `probe merge` / `probe fit` job with its own folder, skipping what is done. Rerun the
    same command after an interruption: finished jobs are kept, stopped fits resume.
    `probe report STUDY_DIR` makes one table of the whole study."""
    from probe.study.spec import load_study

    spec = load_study(file, out)
    if status:
        _show_status(spec)
        return
    chosen = launcher.value if launcher is not None else spec.launcher
    if chosen not in LAUNCHERS:
        from base.errors import UserError

        raise UserError(f"{file}: launcher {chosen!r} is not one of {', '.join(LAUNCHERS)}")
    resources = {k: v for k, v in {"partition": partition, "time": time, "gpus": gpus, "cpus": cpus, "mem": mem,
                                   "parallelism": parallelism}.items() if v is not None}
    notify = None if quiet else (lambda msg: print(f"probe study: {msg}", file=sys.stderr, flush=True))
    try:
        with sigterm_as_interrupt():
            if chosen == "local":
                from probe.study.launch import launch_local

                states = launch_local(spec, jobs, notify)
            else:
                from probe.study.launch import launch_slurm

                states = launch_slurm(spec, resources, notify=notify)
    except KeyboardInterrupt as exc:
        print(f"probe study: interrupted; rerun `probe study {file}` to continue (finished jobs are kept)",
              file=sys.stderr)
        raise typer.Exit(exit_code(exc)) from None
    _summary(spec, states)


def _summary(spec: Study, states: dict[str, str]) -> None:
    from probe.study.jobs import status

    bad = [status(spec.out, j) for j in spec.jobs if states[j.id] != "done"]
    done = len(states) - len(bad)
    print(f"probe study: {done} of {len(states)} jobs done in {spec.out}", file=sys.stderr)
    for s in bad:
        print(f"probe study: {s.job.id}: {s.state}" + (f"; log {s.log}" if s.state == "failed" else ""),
              file=sys.stderr)
    if bad:
        raise typer.Exit(1)


def _show_status(spec: Study) -> None:
    from rich.console import Console
    from rich.table import Table

    from probe.study.jobs import job_dir, status

    table = Table(title=f"study {spec.out}")
    for col in ("job", "kind", "state", "where", "log"):
        table.add_column(col)
    counts: dict[str, int] = {}
    for job in spec.jobs:
        s = status(spec.out, job)
        counts[s.state] = counts.get(s.state, 0) + 1
        d = s.detail
        where = " ".join(str(x) for x in (d.get("host"), d.get("slurm_job_id") and f"slurm {d['slurm_job_id']}",
                                         "returncode" in d and f"exit {d['returncode']}") if x)
        slurm = job_dir(spec.out, job.id) / "slurm.json"
        table.add_row(job.id, job.kind, s.state, where or ("submitted" if slurm.exists() else ""),
                      str(s.log) if s.state in ("failed", "interrupted") else "")
    console = Console(highlight=False, soft_wrap=True)
    console.print(table)
    console.print(", ".join(f"{n} {state}" for state, n in counts.items()))
