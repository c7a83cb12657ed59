"""A study's folder: its index, one folder per job, and running one job.

``STUDY/study.json`` (the index: every job's id, kind, command, output, dependencies
and labels) and ``STUDY/jobs/<id>/`` per job: ``job.json`` (the command),
``state.json`` (running, done, failed or interrupted; when, where, the exit code), ``log.txt``
(the command's output) and ``job.lock``, held while it runs, so that two launches of
one study never run a job twice. Every JSON file is written atomically. A job's
command is an ordinary resumable `probe` command: a job stopped part-way continues
where it stopped when it is run again.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from base.errors import UserError
from base.io import write_json_atomic
from base.locks import exclusive, is_locked
from probe.study.spec import Job, Study

INDEX = "study.json"
STATES = ("done", "running", "failed", "interrupted", "waiting")
#: the job commands this process runs now (a launcher that is stopped stops them too)
RUNNING: set[subprocess.Popen] = set()
#: exit codes of a command stopped by SIGINT or SIGTERM (cli.interrupts: 128 + the signal)
STOPPED_CODES = (128 + signal.SIGINT, 128 + signal.SIGTERM)
_stopping: list[bool] = []  # set once this process stops its jobs: they end interrupted, not failed


def stop_running() -> None:
    """SIGTERM to every job command of this process: each stops as on Ctrl-C, keeping
    what it finished, and is recorded as interrupted."""
    _stopping.append(True)
    for proc in list(RUNNING):
        with contextlib.suppress(OSError):
            proc.terminate()


def job_dir(study_dir: Path, job_id: str) -> Path:
    return study_dir / "jobs" / job_id


def write_index(study: Study) -> None:
    """Create the job folders and write the index; refuse a study folder whose jobs ran
    other commands, unless they ran them without producing any output (a job that failed
    at once, on a mistake since fixed in the study file, is run with its new command)."""
    changed = []
    for job in study.jobs:
        folder = job_dir(study.out, job.id)
        old = _read(folder / "job.json")
        if old and old.get("argv") != list(job.argv) and _read(folder / "state.json") and _has_output(study.out, old):
            changed.append(job.id)
    if changed:
        raise UserError(f"study folder {study.out} ran other commands for {', '.join(changed)} (the study file "
                        "changed); use another study folder (`out`) or remove those job folders")
    try:
        for job in study.jobs:
            folder = job_dir(study.out, job.id)
            folder.mkdir(parents=True, exist_ok=True)
            write_json_atomic(folder / "job.json", job.to_json())
    except OSError as exc:
        raise UserError(f"study folder {study.out}: cannot be written ({exc.strerror}); choose another `out`") from exc
    write_json_atomic(study.out / INDEX, {"study": str(study.path), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                          "jobs": [j.to_json() for j in study.jobs]})


def read_index(study_dir: Path) -> list[Job]:
    """The jobs of a study folder (a UserError when it is not one)."""
    data = _read(study_dir / INDEX)
    if not data or not isinstance(data.get("jobs"), list):
        raise UserError(f"{study_dir} is not a study folder ({INDEX} is missing or damaged); run `probe study`")
    return [Job(j["id"], j["kind"], tuple(j["argv"]), j["output"], tuple(j.get("deps", ())), j.get("labels", {}))
            for j in data["jobs"]]


def _has_output(study_dir: Path, job: dict[str, Any]) -> bool:
    """Whether a job (as its job.json recorded it) left anything of its output: the file or
    folder, or an unfinished one beside it (``FILE.h5.partial``); an empty folder is nothing."""
    out = study_dir / str(job.get("output", ""))
    if out == study_dir:
        return True  # no output recorded: nothing can be told, so nothing is replaced
    for path in (out, out.with_name(out.name + ".partial")):
        if (path.is_dir() and any(path.iterdir())) or (path.exists() and not path.is_dir()):
            return True
    return False


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@dataclass(frozen=True)
class JobStatus:
    job: Job
    state: str  # one of STATES
    detail: dict[str, Any]  # state.json
    log: Path


def status(study_dir: Path, job: Job) -> JobStatus:
    """done / running (its lock is held) / failed / interrupted (stopped by a signal, or
    without a word: killed, or its node lost) / waiting."""
    folder = job_dir(study_dir, job.id)
    detail = _read(folder / "state.json") or {}
    recorded = detail.get("state")
    if is_locked(folder / "job.lock"):
        state = "running"
    elif is_done(study_dir, job):
        state = "done"
    elif recorded == "failed":
        state = "failed"
    elif recorded in ("running", "interrupted"):
        state = "interrupted"
    else:
        state = "waiting"
    return JobStatus(job, state, detail, folder / "log.txt")


def is_done(study_dir: Path, job: Job) -> bool:
    detail = _read(job_dir(study_dir, job.id) / "state.json") or {}
    return detail.get("state") == "done" and (study_dir / job.output).exists()


def run_job(study_dir: str, job_id: str, env: dict[str, str] | None = None) -> str:
    """Run one job unless it is done or running elsewhere; its state afterwards.

    Called in a worker thread of the local launcher, or in a Slurm job through submitit:
    module level and with plain arguments, so that it pickles.
    """
    root = Path(study_dir)
    folder = job_dir(root, job_id)
    job = next(j for j in read_index(root) if j.id == job_id)
    lock = exclusive(folder / "job.lock", f"job {job_id} is running elsewhere")
    try:
        lock.__enter__()
    except UserError:
        return "running"  # another launch of the study has it
    try:
        # Checked under the lock: the other launch may have finished it a moment ago.
        if is_done(root, job):
            return "done"
        return _execute(root, job, folder, env)
    finally:
        lock.__exit__(None, None, None)


def _execute(root: Path, job: Job, folder: Path, env: dict[str, str] | None) -> str:
    where = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    for key in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "CUDA_VISIBLE_DEVICES"):
        if key in os.environ or (env and key in env):
            where[key.lower()] = (env or {}).get(key, os.environ.get(key))
    write_json_atomic(folder / "state.json", {"state": "running", **where})
    (root / job.output).parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "cli", *job.argv]
    with open(folder / "log.txt", "a", encoding="utf-8") as log:
        log.write(f"$ probe {' '.join(job.argv)}\n")
        log.flush()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **(env or {})})
        RUNNING.add(proc)
        try:
            code = proc.wait()
        finally:
            RUNNING.discard(proc)
    # Stopped by a signal (the launcher's, Slurm's pre-emption, a kill): interrupted, to be resumed.
    stopped = bool(_stopping) or code < 0 or code in STOPPED_CODES
    state = "done" if code == 0 else "interrupted" if stopped else "failed"
    write_json_atomic(folder / "state.json", {"state": state, **where, "returncode": code,
                                              "ended": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return state


def expand_studies(paths: list[Path]) -> list[Path | tuple[Path, str]]:
    """``paths`` with every study folder replaced by its fit jobs' run folders, each as
    (folder, label) (``study_runs``), for one report."""
    out: list[Path | tuple[Path, str]] = []
    for path in paths:
        out += study_runs(Path(path)) if (Path(path) / "study.json").is_file() else [path]
    return out


def study_runs(study_dir: Path) -> list[tuple[Path, str]]:
    """The run folders of a study's fit jobs, each with its label (dataset · encoder ·
    methods), for one report; a UserError naming the jobs that are not done."""
    jobs = [j for j in read_index(study_dir) if j.kind == "fit"]
    states = [status(study_dir, j) for j in jobs]
    unfinished = [f"{s.job.id} ({s.state})" for s in states if s.state != "done"]
    if unfinished:
        raise UserError(f"study {study_dir} has fit jobs that are not done: {', '.join(unfinished)}; run "
                        "`probe study` again to finish them")
    return [(study_dir / j.output, f"{j.labels.get('features', '')} · {j.labels.get('methods', '')}")
            for j in jobs]
