"""Launchers: run a study's jobs that are not done, in dependency order.

* ``local``: worker slots on this machine, one per visible GPU (each job sees its
  GPU alone through ``CUDA_VISIBLE_DEVICES``), or ``workers`` slots on a CPU
  (each with its share of the cores).
* ``slurm``: submitit job arrays, one array per wave of jobs whose dependencies are
  done (extraction shards, then merges, then fits), with the study's resources.

Both run :func:`probe.study.jobs.run_job`, which takes the job's lock first: a job
that another launch is running is left to it, and a launch waits for it when others
depend on it.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import io
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from base.errors import UserError
from base.io import write_json_atomic
from probe.study.jobs import job_dir, run_job, status, stop_running, write_index
from probe.study.spec import Job, Study, check_slurm, memory_gb

#: seconds between looks at jobs that another launch is running
POLL = 1.0


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them."""
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    given = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return given[:n] if given else [str(i) for i in range(n)]


def slots(workers: int | None) -> list[dict[str, str]]:
    """One environment per worker slot."""
    gpus = visible_gpus()
    n = workers if workers is not None else max(1, len(gpus))
    if n < 1:
        raise UserError(f"`jobs` {n}: give at least 1")
    if gpus:
        return [{"CUDA_VISIBLE_DEVICES": gpus[k % len(gpus)]} for k in range(n)]
    threads = str(max(1, (os.cpu_count() or 1) // n))
    return [{"CUDA_VISIBLE_DEVICES": "", **{v: os.environ.get(v, threads) for v in ("OMP_NUM_THREADS",
                                                                              "MKL_NUM_THREADS")}}
            for _ in range(n)]


def launch_local(study: Study, workers: int | None = None,
                 notify: Callable[[str], None] | None = None) -> dict[str, str]:
    """Run every job that is not done; each job's state at the end."""
    write_index(study)
    envs = slots(workers if workers is not None else study.workers)
    states = {j.id: status(study.out, j).state for j in study.jobs}
    elsewhere = {i for i, s in states.items() if s == "running"}  # another launch runs these
    todo = [j for j in study.jobs if states[j.id] not in ("done", "running")]
    states.update({j.id: "waiting" for j in todo})  # failed or stopped before: tried again
    free, running = list(range(len(envs))), {}
    with cf.ThreadPoolExecutor(len(envs)) as pool, _stopping_jobs():
        while todo or running or elsewhere:
            _look_again(study, elsewhere, states, todo)
            _block_failed(todo, states)
            for job in [j for j in todo if all(states[d] == "done" for d in j.deps)][:len(free)]:
                todo.remove(job)
                slot = free.pop(0)
                states[job.id] = "running"
                gpu = envs[slot]["CUDA_VISIBLE_DEVICES"]
                _say(notify, f"{job.id}: started" + (f" on GPU {gpu}" if gpu else ""))
                running[pool.submit(run_job, str(study.out), job.id, envs[slot])] = (job, slot)
            if not running:
                if not elsewhere:
                    break  # what is left waits for jobs that failed
                time.sleep(POLL)
                continue
            finished, _ = cf.wait(running, timeout=POLL, return_when=cf.FIRST_COMPLETED)
            for fut in finished:
                job, slot = running.pop(fut)
                free.append(slot)
                states[job.id] = fut.result()
                if states[job.id] == "running":  # another launch took it first
                    elsewhere.add(job.id)
                else:
                    _say(notify, f"{job.id}: {states[job.id]}")
    return {j.id: status(study.out, j).state for j in study.jobs}


@contextlib.contextmanager
def _stopping_jobs() -> Iterator[None]:
    """Ctrl-C or SIGTERM to the launcher reaches the job commands it runs: without this
    the pool would wait for each to finish its whole job."""
    try:
        yield
    except BaseException:
        stop_running()
        raise


def _say(notify: Callable[[str], None] | None, message: str) -> None:
    if notify is not None:
        notify(message)


def _block_failed(todo: list[Job], states: dict[str, str]) -> None:
    """Jobs whose dependencies failed in this launch are not run (they stay waiting)."""
    for job in list(todo):
        if any(states[d] in ("failed", "blocked") for d in job.deps):
            todo.remove(job)
            states[job.id] = "blocked"


def _look_again(study: Study, elsewhere: set[str], states: dict[str, str], todo: list[Job]) -> None:
    """The jobs another launch is running: done, failed, or (its launch died) ours to run."""
    for job in [j for j in study.jobs if j.id in elsewhere]:
        now = status(study.out, job).state
        if now == "running":
            continue
        elsewhere.discard(job.id)
        states[job.id] = now if now in ("done", "failed") else "waiting"
        if states[job.id] == "waiting":
            todo.append(job)


# --------------------------------------------------------------------------- slurm


def executor_parameters(resources: dict[str, Any], name: str) -> dict[str, Any]:
    """submitit's parameters for the study's ``[slurm]`` resources (and flags), each checked
    (:func:`probe.study.spec.check_slurm`)."""
    check_slurm(resources)
    params: dict[str, Any] = {"name": name, "nodes": 1, "tasks_per_node": 1}
    renamed = {"time": "timeout_min", "gpus": "gpus_per_node", "cpus": "cpus_per_task",
               "partition": "slurm_partition", "parallelism": "slurm_array_parallelism"}
    params.update({renamed[k]: v for k, v in resources.items() if k in renamed and v is not None})
    if resources.get("mem") is not None:
        params["mem_gb"] = memory_gb(resources["mem"])
    return params


def waves(jobs: list[Job]) -> list[list[Job]]:
    """Jobs grouped by depth: each wave needs only jobs of earlier waves."""
    depth: dict[str, int] = {}
    for j in jobs:  # the index lists every job after its dependencies
        depth[j.id] = 1 + max((depth[d] for d in j.deps), default=-1)
    return [[j for j in jobs if depth[j.id] == k] for k in range(max(depth.values(), default=-1) + 1)]


def launch_slurm(study: Study, resources: dict[str, Any], cluster: str = "slurm",
                 notify: Callable[[str], None] | None = None) -> dict[str, str]:
    """Submit the jobs that are not done as job arrays (a wave at a time) and wait for them.

    ``cluster`` is submitit's: ``slurm``, or ``local``/``debug`` (its executors on
    this machine, for tests).
    """
    missing = [p for p in ("sbatch", "srun") if shutil.which(p) is None] if cluster == "slurm" else []
    if missing:  # submitit submits with sbatch, and its executor refuses to start without srun
        raise UserError(f"the slurm launcher needs Slurm, and it was not found here (`{missing[0]}` is not on "
                        "PATH): run `probe study` on the cluster's login node, or choose `launcher` local")
    params = executor_parameters({**study.slurm, **resources}, f"probe-{study.out.name}")  # checked first
    import submitit

    write_index(study)
    folder = study.out / "slurm"
    executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=cluster)
    executor.update_parameters(**params)
    for wave in waves(study.jobs):
        todo = [j for j in wave if status(study.out, j).state not in ("done", "running")
                and all(status(study.out, study_job(study, d)).state == "done" for d in j.deps)]
        if not todo:
            continue
        submitted = _submit(executor, study, todo)
        for job, sub in zip(todo, submitted, strict=True):
            write_json_atomic(job_dir(study.out, job.id) / "slurm.json",
                              {"job_id": sub.job_id, "stdout": str(sub.paths.stdout), "stderr": str(sub.paths.stderr)})
            if notify is not None:
                notify(f"{job.id}: submitted as Slurm job {sub.job_id}")
        for job, sub in zip(todo, submitted, strict=True):
            try:
                sub.result()
            except Exception as exc:  # the Slurm job itself failed (time limit, node, memory)
                _record_failure(study.out, job, f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
            if notify is not None:
                notify(f"{job.id}: {status(study.out, job).state}")
    return {j.id: status(study.out, j).state for j in study.jobs}


def study_job(study: Study, job_id: str) -> Job:
    return next(j for j in study.jobs if j.id == job_id)


def _record_failure(study_dir: Path, job: Job, why: str) -> None:
    path = job_dir(study_dir, job.id) / "state.json"
    if status(study_dir, job).state != "done":
        write_json_atomic(path, {"state": "failed", "error": why})


def _submit(executor: Any, study: Study, todo: list[Job]) -> list[Any]:
    """``todo`` submitted as one job array; sbatch refusing it (an unknown partition, a time
    over the partition's limit) is a UserError carrying sbatch's own words."""
    from submitit.core.utils import FailedJobError, FailedSubmissionError

    quiet = io.StringIO()  # submitit prints sbatch's complaint as well: it is in the error, once
    try:
        with contextlib.redirect_stderr(quiet):
            return executor.map_array(run_job, [str(study.out)] * len(todo), [j.id for j in todo])
    except (FailedJobError, FailedSubmissionError, OSError) as exc:
        said = " ".join((str(exc) or quiet.getvalue() or type(exc).__name__).split())[:400]
        raise UserError(f"Slurm refused the jobs of {study.path} ({said}); check the resources asked for "
                        f"(`partition`, `time`, `gpus`, `cpus`, `mem`: {study.path}'s [slurm] or the flags)") from exc
