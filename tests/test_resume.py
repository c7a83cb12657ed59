"""Issue 14: a fit that resumes; issue 17's run-folder cases (4, 6, 7, 11, 13).

Each case runs the CLI in a fresh process, as a user (or Slurm) would: exit code,
one line on stderr without a traceback, and the user's files byte-identical.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from safetensors import safe_open

from tests.conftest import (
    REPO,
    assert_user_error,
    kept_chunks,
    run_cli,
    small_tmpfs,
    wait_for_chunks,
)
from tests.h5craft import toy_arrays, write_feature_file

#: twelve cohorts (one per seed), each a fraction of a second: a kill lands mid-grid (the
#: stochastic trainer: the full-batch solver would solve erm's twelve seeds as one problem)
GRID = ["--method", "erm", "--solver", "adam", "--seed", "0:11:12", "--steps", "60", "--batch-size", "16", "--eval-every", "20",
        "--quiet"]
#: far too long to finish while a test waits (the test stops it)
LONG = ["--method", "erm", "--solver", "adam", "--seed", "0:1999:2000", "--steps", "200", "--batch-size", "16", "--quiet"]
FAST = ["--method", "erm", "--steps", "20", "--quiet"]


def _digest(folder: Path, skip: tuple[str, ...] = (".partial", ".lock")) -> dict[str, str]:
    """Every file under ``folder`` (but probe's journal and lock) and its hash."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.relative_to(folder).parts[0] not in skip}


def _start(features: Path, run: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cli", "fit", str(features), "--out", str(run), *args],
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.fixture
def features(tmp_path: Path) -> Path:
    return write_feature_file(tmp_path / "good.h5", toy_arrays(40, 8))


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]


def _head(path: Path) -> tuple[dict, dict]:
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        return {k: f.get_tensor(k) for k in f.keys()}, json.loads(meta["config"])


@pytest.mark.slow
def test_sigkill_mid_grid_then_the_same_command_finishes_it_as_if_uninterrupted(tmp_path: Path,
                                                                                features: Path) -> None:
    run = tmp_path / "run"
    proc = _start(features, run, *GRID)
    wait_for_chunks(proc, run, 2)
    proc.kill()  # SIGKILL: no handler runs, nothing is written on the way out
    proc.wait(timeout=60)
    kept = len(kept_chunks(run))
    assert 2 <= kept < 12, kept
    assert not (run / "results.jsonl").exists()

    res = run_cli("fit", features, "--out", run, *GRID)  # the same command
    assert res.code == 0, res.stderr
    ref = tmp_path / "ref"
    assert run_cli("fit", features, "--out", ref, *GRID).code == 0

    assert _rows(run) == _rows(ref)
    assert [r["hparams"]["seed"] for r in _rows(run)] == list(range(12))
    summary, expected = (json.loads((d / "summary.json").read_text()) for d in (run, ref))
    for s in (summary, expected):  # the only fields that differ: when, and the --out typed
        del s["provenance"]["created"], s["provenance"]["command"]
    assert summary == expected and summary["complete"] is True
    (tensors, config), (ref_tensors, ref_config) = _head(run / "heads/erm.safetensors"), _head(ref / "heads/erm.safetensors")
    assert config == ref_config and tensors.keys() == ref_tensors.keys()
    assert all(bool((tensors[k] == ref_tensors[k]).all()) for k in tensors)
    assert not (run / ".partial").exists(), "the journal outlived the finished fit"

    before = _digest(run)  # a rerun of a finished fit: nothing to do, nothing changed
    res = run_cli("fit", features, "--out", run, *GRID)
    assert res.code == 0 and _digest(run) == before, res.stderr


@pytest.mark.slow
def test_a_rerun_with_other_settings_is_refused_unless_overwrite(tmp_path: Path, features: Path) -> None:
    run = tmp_path / "run"
    proc = _start(features, run, *GRID)
    wait_for_chunks(proc, run, 1)
    proc.kill()
    proc.wait(timeout=60)
    journal = {p.name for p in kept_chunks(run)}
    res = run_cli("fit", features, "--out", run, *GRID, "--lr", "0.5")
    assert_user_error(res, "unfinished fit of other data, settings or code", "--overwrite")
    assert {p.name for p in kept_chunks(run)} == journal
    other = write_feature_file(tmp_path / "other.h5", toy_arrays(40, 8, seed=3))
    assert_user_error(run_cli("fit", other, "--out", run, *GRID), "other data, settings or code")

    assert run_cli("fit", features, "--out", run, *FAST, "--overwrite").code == 0
    assert not (run / ".partial").exists()
    before = _digest(run)
    assert_user_error(run_cli("fit", features, "--out", run, *GRID), "already holds a run", "--overwrite")
    assert _digest(run) == before


def test_two_fits_into_one_folder_at_once(tmp_path: Path, features: Path) -> None:
    run = tmp_path / "run"
    proc = _start(features, run, *LONG)
    try:
        wait_for_chunks(proc, run, 1)
        assert_user_error(run_cli("fit", features, "--out", run, *LONG), "being written by another")
    finally:
        proc.kill()
        proc.wait(timeout=60)


def _stop(proc: subprocess.Popen, sig: int) -> tuple[int, str]:
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert "Traceback" not in err
    assert len([ln for ln in err.splitlines() if ln.strip()]) == 1, err
    return proc.returncode, err


def test_sigterm_writes_the_finished_configurations_like_ctrl_c(tmp_path: Path, features: Path) -> None:
    run = tmp_path / "run"
    proc = _start(features, run, *LONG)
    wait_for_chunks(proc, run, 1)
    code, err = _stop(proc, signal.SIGTERM)
    assert code == 143, (code, err)
    assert "terminated" in err and str(run) in err
    rows = _rows(run)
    assert rows and [r["hparams"]["seed"] for r in rows] == list(range(len(rows)))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["complete"] is False and summary["methods"]["erm"]["selected"] is not None
    assert not list(run.rglob("*.tmp"))


def test_overwrite_interrupted_keeps_the_previous_complete_run(tmp_path: Path, features: Path) -> None:
    run = tmp_path / "run"
    assert run_cli("fit", features, "--out", run, *FAST).code == 0
    before = _digest(run)
    proc = _start(features, run, *LONG, "--overwrite")
    wait_for_chunks(proc, run, 1)
    code, err = _stop(proc, signal.SIGINT)
    assert code == 130 and "unchanged" in err, (code, err)
    assert _digest(run) == before
    assert kept_chunks(run), "the finished configurations were not kept for a rerun"


def test_default_out_when_runs_is_a_file(tmp_path: Path, features: Path) -> None:
    (tmp_path / "runs").write_text("my notes\n")
    res = run_cli("fit", features, *FAST, cwd=tmp_path)
    assert_user_error(res, "runs is a file", "--out")
    assert (tmp_path / "runs").read_text() == "my notes\n"


def test_overwrite_leaves_files_probe_did_not_write(tmp_path: Path, features: Path) -> None:
    run = tmp_path / "run"
    assert run_cli("fit", features, "--out", run, *FAST).code == 0
    (run / "heads" / "my_notes.safetensors").write_bytes(b"mine")
    (run / "notes.txt").write_text("mine too")
    res = run_cli("fit", features, "--out", run, "--method", "cma", "--steps", "20", "--alpha", "1",
                  "--beta", "1", "--quiet", "--overwrite")
    assert res.code == 0, res.stderr
    assert (run / "heads" / "my_notes.safetensors").read_bytes() == b"mine"
    assert (run / "notes.txt").read_text() == "mine too"
    assert sorted(p.name for p in (run / "heads").iterdir()) == ["cma.safetensors", "my_notes.safetensors"]
    assert json.loads((run / "summary.json").read_text())["methods"].keys() == {"cma"}


def test_overwrite_refuses_what_is_in_the_way(tmp_path: Path, features: Path) -> None:
    run = tmp_path / "run"
    (run / "results.jsonl").mkdir(parents=True)
    (run / "results.jsonl" / "mine.txt").write_text("x")
    before = _digest(run)
    assert_user_error(run_cli("fit", features, "--out", run, *FAST, "--overwrite"), "results.jsonl", "move")
    assert _digest(run) == before


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs, mounted for the test (root only), unmounted afterwards."""
    with small_tmpfs(tmp_path, "2m") as mnt:
        yield mnt


def _fill(disk: Path) -> Path:
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as fh:  # unbuffered: nothing is left to flush on close
        for size in (65536, 4096, 1):
            try:
                while True:
                    fh.write(b"\0" * size)
            except OSError:
                pass
    return filler


@pytest.mark.slow
def test_full_disk_during_overwrite_keeps_the_previous_run(small_disk: Path, features: Path) -> None:
    run = small_disk / "run"
    assert run_cli("fit", features, "--out", run, *FAST).code == 0
    before = _digest(run)
    filler = _fill(small_disk)
    res = run_cli("fit", features, "--out", run, *GRID, "--overwrite")
    assert_user_error(res, "no space left", str(run), "unchanged")
    assert _digest(run) == before
    left = {str(p.relative_to(run)) for p in run.rglob("*")} - set(before) - {"heads"}
    assert all(p.split("/")[0] in (".partial", ".lock") for p in left), left
    assert not [p for p in left if "tmp" in p or "staging" in p], left
    filler.unlink()
    res = run_cli("fit", features, "--out", run, *GRID, "--overwrite")
    assert res.code == 0, res.stderr
    assert len(_rows(run)) == 12 and not (run / ".partial").exists()


def test_ctrl_c_then_the_same_call_resumes_from_the_partial_run(tmp_path: Path, features: Path) -> None:
    """In-process: an interrupted fit writes a partial run (complete: false); the same
    call fits only the rest and ends where an uninterrupted one does."""
    from probe.api import fit_grid

    calls = {"n": 0}

    class Stop:
        def total(self, n: int) -> None:
            pass

        def advance(self, n: int) -> None:
            calls["n"] += n
            if calls["n"] > 2 * 30 + 5:  # the third cohort is under way
                raise KeyboardInterrupt

    args = dict(methods=["erm"], grid={"seed": [0, 1, 2, 3]}, steps=30, batch_size=16, solver="adam",
                eval_every=10, command="probe fit good.h5")
    with pytest.raises(KeyboardInterrupt):
        fit_grid(str(features), out=tmp_path / "run", progress=Stop(), **args)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["complete"] is False
    assert [r["hparams"]["seed"] for r in _rows(tmp_path / "run")] == [0, 1]
    seen = {"n": 0}

    class Count:
        def total(self, n: int) -> None:
            seen["n"] = n

        def advance(self, n: int) -> None:
            pass

    fit_grid(str(features), out=tmp_path / "run", progress=Count(), **args)
    assert seen["n"] == 2 * 30, "the finished cohorts were fitted again"
    fit_grid(str(features), out=tmp_path / "ref", **args)
    assert _rows(tmp_path / "run") == _rows(tmp_path / "ref")


def test_a_report_refuses_a_run_folder_mid_swap(tmp_path: Path) -> None:
    from base.errors import UserError
    from probe.reports import build_report
    from tests.runfolders import write_run_folder

    write_run_folder(tmp_path / "run", {"erm": {"weight_decay": [0.0]}})
    (tmp_path / "run" / ".partial" / "staging").mkdir(parents=True)
    (tmp_path / "run" / ".partial" / "staging" / "READY").write_text("{}")
    with pytest.raises(UserError, match="being replaced by `probe fit`"):
        build_report([tmp_path / "run"])


def test_a_fit_by_other_code_is_another_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    """An interrupted fit resumed, or a finished one reused, by other code would mix or pass
    off another version's heads: the fitting code's source is part of the fingerprint."""
    from probe.runs import resume

    plan = {"erm": {"configs": [{"seed": 0}]}}
    before = resume.fit_fingerprint("data", plan)
    assert resume.fit_fingerprint("data", plan) == before
    monkeypatch.setattr(resume, "source_hash", lambda: "edited")
    assert resume.fit_fingerprint("data", plan) != before
