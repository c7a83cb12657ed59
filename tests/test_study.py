"""Issue 14: `probe study` – a study file, its jobs, the launchers, and one report.

Two feature files × two method groups = four fit jobs. The local launcher runs them
with two workers, is killed part-way and rerun; submitit's own executor runs the same
study through the slurm launcher's code, to the same results.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, assert_user_error, run_cli
from tests.h5craft import toy_arrays, write_feature_file
from tests.slurm import slurm_cluster  # noqa: F401  (a fixture)

STUDY = """
[study]
out = "st"

[fit]
steps = 60
batch_size = 16
eval_every = 20
seeds = "0:7:8"

[[features]]
name = "a"
file = "a.h5"

[[features]]
name = "b"
file = "b.h5"

[[methods]]
method = "erm"

[[methods]]
method = "cma"
alpha = [1, 10]
beta = 1
"""
JOBS = ["fit-a-erm", "fit-a-cma", "fit-b-erm", "fit-b-cma"]


def make_study(folder: Path, text: str = STUDY) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_feature_file(folder / "a.h5", toy_arrays(30, 6, seed=1))
    write_feature_file(folder / "b.h5", toy_arrays(30, 6, seed=2))
    (folder / "study.toml").write_text(text)
    return folder / "study.toml"


def _state(study_dir: Path, job: str) -> str | None:
    try:
        return json.loads((study_dir / "jobs" / job / "state.json").read_text())["state"]
    except (OSError, ValueError):
        return None


def _runs(study_dir: Path, jobs: list[str] = JOBS) -> dict[str, list[dict]]:
    return {j: [json.loads(line) for line in (study_dir / "jobs" / j / "run" / "results.jsonl").read_text()
                .splitlines()] for j in jobs}


def _start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cli", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.mark.slow
def test_local_study_killed_part_way_then_rerun(tmp_path: Path) -> None:
    toml = make_study(tmp_path)
    st = tmp_path / "st"
    proc = _start("study", str(toml), "--jobs", "2")
    deadline = time.time() + 300
    while not any(_state(st, j) == "done" for j in JOBS):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its jobs, as a lost node would
    proc.wait(timeout=60)
    finished = [j for j in JOBS if _state(st, j) == "done"]
    assert 0 < len(finished) < 4, finished
    kept = {j: ((st / "jobs" / j / "state.json").read_bytes(), (st / "jobs" / j / "log.txt").read_bytes())
            for j in finished}

    shown = run_cli("study", toml, "--status")
    assert shown.code == 0, shown.stderr
    assert "done" in shown.stdout and ("interrupted" in shown.stdout or "waiting" in shown.stdout)

    res = run_cli("study", toml, "--jobs", "2")
    assert res.code == 0, res.stderr
    assert all(_state(st, j) == "done" for j in JOBS)
    for j, (state, log) in kept.items():  # finished jobs were not run again
        assert (st / "jobs" / j / "state.json").read_bytes() == state
        assert (st / "jobs" / j / "log.txt").read_bytes() == log

    report = run_cli("report", st, "--format", "csv")
    assert report.code == 0, report.stderr
    for label in ("erm (a · erm)", "cma (a · cma)", "erm (b · erm)", "cma (b · cma)"):
        assert label in report.stdout, report.stdout

    ref = tmp_path / "ref"  # the same fits, run alone, give the same rows
    res = run_cli("fit", tmp_path / "a.h5", "--method", "cma", "--alpha", "1,10", "--beta", "1", "--out", ref,
                  "--steps", "60", "--batch-size", "16", "--eval-every", "20", "--seed", "0:7:8", "--quiet")
    assert res.code == 0, res.stderr
    assert _runs(st)["fit-a-cma"] == [json.loads(line) for line in (ref / "results.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_launches_at_once_run_each_job_once(tmp_path: Path) -> None:
    toml = make_study(tmp_path)
    st = tmp_path / "st"
    procs = [_start("study", str(toml), "--jobs", "1") for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    for j in JOBS:
        assert _state(st, j) == "done"
        assert (st / "jobs" / j / "log.txt").read_text().count("$ probe fit") == 1, j


@pytest.mark.slow
def test_submitit_path_gives_the_local_launcher_results(tmp_path: Path) -> None:
    """One feature file's two method groups: a job array of two, as many as run at once
    (the four-job study runs through a real Slurm in the test below, where there is one)."""
    pytest.importorskip("submitit")
    from probe.study.launch import launch_local, launch_slurm
    from probe.study.spec import load_study

    one_file = STUDY.replace('[[features]]\nname = "b"\nfile = "b.h5"\n', "")
    jobs = ["fit-a-erm", "fit-a-cma"]
    local = load_study(make_study(tmp_path / "l", one_file))
    assert [j.id for j in local.jobs] == jobs
    assert set(launch_local(local, 2).values()) == {"done"}
    debug = load_study(make_study(tmp_path / "d", one_file))
    assert set(launch_slurm(debug, {"time": 10, "mem": "1G", "cpus": 1, "parallelism": 2},
                            cluster="debug").values()) == {"done"}
    assert _runs(debug.out, jobs) == _runs(local.out, jobs)
    assert all(json.loads((debug.out / "jobs" / j / "slurm.json").read_text())["job_id"] for j in jobs)


@pytest.mark.slow
def test_a_failed_job_is_listed_with_its_log_and_runs_again_once_the_study_is_fixed(tmp_path: Path) -> None:
    """A file that is there but holds no features passes the study file's checks, and its
    jobs fail (with nothing written). Issue 26, item 16: once the study file names the right
    file, the rerun runs those jobs with their new command; it is not refused."""
    fixed = STUDY.split("[[methods]]")[0] + '[[methods]]\nmethod = "erm"\n'
    toml = make_study(tmp_path, fixed.replace('file = "b.h5"', 'file = "notes.h5"'))
    (tmp_path / "notes.h5").write_text("not features\n")
    res = run_cli("study", toml, "--jobs", "2")
    assert res.code == 1
    log = tmp_path / "st" / "jobs" / "fit-b-erm" / "log.txt"
    assert f"fit-b-erm: failed; log {log}" in res.stderr
    assert "not an HDF5 file" in log.read_text()
    assert _state(tmp_path / "st", "fit-a-erm") == "done"
    assert_user_error(run_cli("report", tmp_path / "st"), "not done", "fit-b-erm")

    toml.write_text(fixed)
    res = run_cli("study", toml, "--jobs", "2")
    assert res.code == 0, res.stderr
    assert [_state(tmp_path / "st", j) for j in ("fit-a-erm", "fit-b-erm")] == ["done", "done"]


@pytest.mark.parametrize(("edit", "fragment"), [
    (lambda s: s.replace("steps = 60", "stepz = 60"), "stepz"),
    (lambda s: s.replace('alpha = [1, 10]', 'alpha = "1:x:3"'), "alpha"),
    (lambda s: s.replace('method = "cma"', 'method = "magic"'), "magic"),
    (lambda s: s.replace('name = "b"', 'name = "a"'), "named 'a'"),
    (lambda s: s + "\n[broken\n", "not valid TOML"),
    # issue 26, item 16: every value checked as `probe fit` and `probe extract` check it
    (lambda s: s.replace("steps = 60", "steps = -5"), "[fit]: `steps`: -5"),
    (lambda s: s.replace("beta = 1", "beta = 1\nbatch_size = \"many\""), "[[methods]] #2: `batch_size` 'many'"),
    (lambda s: s.replace('file = "b.h5"', 'file = "missing.h5"'), "#2: `file`"),
    (lambda s: s.replace('file = "b.h5"', 'dataset = "demo"\n[features.options]\nbatch_sise = 8'),
     "[features.options]: unknown key 'batch_sise'"),
])
def test_study_file_mistakes_are_one_line(tmp_path: Path, edit, fragment: str) -> None:
    toml = make_study(tmp_path, edit(STUDY))
    res = run_cli("study", toml)
    assert_user_error(res, fragment, str(toml))
    assert not (tmp_path / "st").exists()


@pytest.mark.slow
def test_sigterm_to_a_study_records_its_running_job_as_interrupted(tmp_path: Path) -> None:
    """Issue 26, item 16: stopped by SIGTERM, a job is interrupted (to be resumed), not failed."""
    # The stochastic trainer for a million steps: the job is surely still fitting when the
    # signal comes (the full-batch solver converges in a second or two).
    toml = make_study(tmp_path, STUDY.replace("steps = 60", 'steps = 1000000\nsolver = "adam"').split("[[features]]")[0]
                      + '[[features]]\nname = "a"\nfile = "a.h5"\n[[methods]]\nmethod = "erm"\n')
    st = tmp_path / "st"
    proc = _start("study", str(toml), "--quiet")
    deadline = time.time() + 120
    # Signalled once the job's `probe fit` has made its run folder: long after the launcher
    # registered the command it started (a signal between the job's first log line and
    # that moment would find no command to pass it on to, and the job would run to its end).
    while not (st / "jobs" / "fit-a-erm" / "run").is_dir():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and "interrupted" in err, err
    assert _state(st, "fit-a-erm") == "interrupted"
    shown = run_cli("study", toml, "--status")
    assert shown.code == 0 and "interrupted" in shown.stdout and "failed" not in shown.stdout, shown.stdout


def test_expansion_of_extraction_specs(tmp_path: Path) -> None:
    from probe.study.launch import waves
    from probe.study.spec import load_study

    toml = tmp_path / "s.toml"
    (tmp_path / "data").mkdir()  # a dataset's folder must be there when the study file is read
    toml.write_text('[[features]]\nname = "wb"\ndataset = "waterbirds"\nroot = "data"\nencoder = "efficientnet-lite0"'
                    '\nshards = 2\n[features.options]\nbatch_size = 8\n'
                    '[[methods]]\nmethods = ["erm", "cma"]\nsplit = true\n')
    study = load_study(toml)
    assert [j.id for j in study.jobs] == ["extract-wb-0of2", "extract-wb-1of2", "merge-wb", "fit-wb-erm",
                                          "fit-wb-cma"]
    assert [[j.id for j in w] for w in waves(study.jobs)] == [study_ids := ["extract-wb-0of2", "extract-wb-1of2"],
                                                              ["merge-wb"], ["fit-wb-erm", "fit-wb-cma"]]
    assert study_ids and study.jobs[0].argv[-3:] == ("--shard", "0/2", "--quiet")
    assert "--batch-size" in study.jobs[0].argv and str(tmp_path / "data") in study.jobs[0].argv
    assert study.jobs[2].argv[:2] == ("merge", str(tmp_path / "s.study" / "features" / "wb.h5"))
    assert study.jobs[3].deps == ("merge-wb",)


@pytest.mark.slow
@pytest.mark.usefixtures("slurm_cluster")
def test_slurm_launcher_on_a_real_single_node_slurm(tmp_path: Path) -> None:
    toml = make_study(tmp_path / "s")
    res = run_cli("study", toml, "--launcher", "slurm", "--time", "20", "--mem", "1G", "--cpus", "1",
                  "--parallelism", "2", timeout=900)
    assert res.code == 0, res.stderr
    st = tmp_path / "s" / "st"
    assert all(_state(st, j) == "done" for j in JOBS)
    assert all(json.loads((st / "jobs" / j / "state.json").read_text()).get("slurm_job_id") for j in JOBS)
    local = load_local_reference(tmp_path / "l")
    assert _runs(st) == _runs(local)
    again = run_cli("study", toml, "--launcher", "slurm")  # nothing left to submit
    assert again.code == 0 and "submitted" not in again.stderr, again.stderr


def load_local_reference(folder: Path) -> Path:
    res = run_cli("study", make_study(folder), "--jobs", "2")
    assert res.code == 0, res.stderr
    return folder / "st"


@pytest.mark.slow
def test_a_study_extracts_in_shards_merges_and_fits(tmp_path: Path) -> None:
    """The study layer does the sharding and the merge: the merged file is what one
    unsharded extraction writes, and the fit runs on it."""
    from tests.fixtures import formats

    built = formats.waterbirds(tmp_path / "data", per_cell=3)
    toml = tmp_path / "s.toml"
    toml.write_text(f'[fit]\nsteps = 20\n[[features]]\nname = "wb"\ndataset = "waterbirds"\nroot = "{built.root}"\n'
                    'encoder = "efficientnet-lite0"\nshards = 2\n[features.options]\nbatch_size = 8\n'
                    '[[methods]]\nmethod = "erm"\n')
    res = run_cli("study", toml, "--jobs", "2", timeout=900)
    assert res.code == 0, res.stderr
    st = tmp_path / "s.study"
    assert [_state(st, j) for j in ("extract-wb-0of2", "extract-wb-1of2", "merge-wb", "fit-wb-erm")] == ["done"] * 4
    ref = tmp_path / "ref.h5"
    assert run_cli("extract", "waterbirds", "--root", built.root, "--encoder", "efficientnet-lite0",
                   "--batch-size", "8", "--out", ref, "--quiet").code == 0
    import h5py
    import numpy as np

    with h5py.File(st / "features" / "wb.h5") as merged, h5py.File(ref) as one:
        # (the jobs run with one thread each, the reference with all: the same up to rounding)
        np.testing.assert_allclose(merged["features"][:], one["features"][:], rtol=1e-4, atol=1e-5)
        assert list(merged["id"][:]) == list(one["id"][:])
    summary = json.loads((st / "jobs" / "fit-wb-erm" / "run" / "summary.json").read_text())
    assert summary["provenance"]["features"]["dataset"] == "waterbirds"
