"""Issue 7: every bad input is one line on stderr, exit code 2, nothing overwritten.

Each case runs the CLI in a fresh interpreter, exactly as a user would.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import assert_user_error, run_cli
from tests.h5craft import toy_arrays, write_feature_file

FAST = ["--steps", "20", "--quiet"]


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A folder with a good feature file and a previous run that must survive."""
    write_feature_file(tmp_path / "good.h5")
    prev = tmp_path / "run"
    prev.mkdir()
    (prev / "results.jsonl").write_text('{"previous": true}\n')
    (prev / "summary.json").write_text('{"previous": true}\n')
    return tmp_path


def _fit_fails(workdir: Path, feature_file: Path | str, *fragments: str, extra: tuple[str, ...] = ()) -> None:
    before = _digest(workdir)
    res = run_cli("fit", feature_file, "--method", "erm", "--out", workdir / "run", "--overwrite", *FAST, *extra)
    assert_user_error(res, *fragments)
    after = _digest(workdir)
    assert after == before, "a failed command changed files that were already there"


def test_missing_file(workdir: Path) -> None:
    _fit_fails(workdir, workdir / "nope.h5", "nope.h5", "no such file")


def test_folder_instead_of_file(workdir: Path) -> None:
    _fit_fails(workdir, workdir / "run", "folder")


def test_unreadable_file(permdir: tuple[Path, list[str]]) -> None:
    folder, prefix = permdir
    bad = folder / "locked.h5"
    shutil.copy(folder / "good.h5", bad)
    bad.chmod(0)
    before = _digest(folder)
    res = run_cli("fit", bad, "--method", "erm", "--out", folder / "run", *FAST, prefix=prefix, cwd=folder)
    assert_user_error(res, "locked.h5", "read")
    assert _digest(folder) == before


def test_not_hdf5(workdir: Path) -> None:
    bad = workdir / "notes.h5"
    bad.write_text("these are not features\n")
    _fit_fails(workdir, bad, "notes.h5", "not an HDF5 file")


def test_truncated_hdf5(workdir: Path) -> None:
    data = (workdir / "good.h5").read_bytes()
    bad = workdir / "cut.h5"
    bad.write_bytes(data[: len(data) // 2])
    _fit_fails(workdir, bad, "cut.h5")


def test_other_schema(workdir: Path) -> None:
    bad = write_feature_file(workdir / "other.h5", schema="someone-else/3")
    _fit_fails(workdir, bad, "other.h5", "someone-else/3")


def test_no_schema_attribute(workdir: Path) -> None:
    import h5py

    bad = workdir / "plain.h5"
    with h5py.File(bad, "w") as h5:
        h5.create_dataset("x", data=np.zeros(3))
    _fit_fails(workdir, bad, "plain.h5", "schema")


def test_incomplete_extraction_refused_then_allowed(workdir: Path) -> None:
    bad = write_feature_file(workdir / "partial.h5", complete=False)
    _fit_fails(workdir, bad, "partial.h5", "incomplete", "--allow-incomplete")


def test_nan_features(workdir: Path) -> None:
    arrays = toy_arrays()
    arrays["features"][5, 2] = np.nan
    bad = write_feature_file(workdir / "nan.h5", arrays)
    _fit_fails(workdir, bad, "nan.h5", "NaN or infinity", "row 5")


def test_inf_features(workdir: Path) -> None:
    arrays = toy_arrays()
    arrays["features"][7, 0] = np.inf
    bad = write_feature_file(workdir / "inf.h5", arrays)
    _fit_fails(workdir, bad, "inf.h5", "row 7")


def test_split_with_no_rows(workdir: Path) -> None:
    arrays = toy_arrays()
    arrays["split"][arrays["split"] == 1] = 2  # no validation rows left
    bad = write_feature_file(workdir / "noval.h5", arrays)
    _fit_fails(workdir, bad, "noval.h5", "val")


def test_class_with_no_training_rows(workdir: Path) -> None:
    arrays = toy_arrays()
    drop = (arrays["split"] == 0) & (arrays["y"] == 1)
    arrays = {k: v[~drop] for k, v in arrays.items()}
    bad = write_feature_file(workdir / "noclass.h5", arrays)
    _fit_fails(workdir, bad, "noclass.h5", "large")


def test_group_with_no_training_rows(workdir: Path) -> None:
    arrays = toy_arrays()
    drop = (arrays["split"] == 0) & (arrays["group"] == 1)
    arrays = {k: v[~drop] for k, v in arrays.items()}
    bad = write_feature_file(workdir / "nogroup.h5", arrays)
    _fit_fails(workdir, bad, "nogroup.h5", "small/green")


def test_labels_outside_class_list(workdir: Path) -> None:
    arrays = toy_arrays()
    arrays["y"][3] = 5
    bad = write_feature_file(workdir / "label.h5", arrays)
    _fit_fails(workdir, bad, "label.h5", "y=5", "row 3")


def test_mismatched_lengths(workdir: Path) -> None:
    arrays = toy_arrays()
    arrays["group"] = arrays["group"][:-4]
    bad = write_feature_file(workdir / "short.h5", arrays)
    _fit_fails(workdir, bad, "short.h5", "different lengths")


def test_missing_dataset(workdir: Path) -> None:
    bad = write_feature_file(workdir / "noy.h5", drop=("y",))
    _fit_fails(workdir, bad, "noy.h5", "missing")


def test_unknown_method(workdir: Path) -> None:
    before = _digest(workdir)
    res = run_cli("fit", workdir / "good.h5", "--method", "erm,magic", "--out", workdir / "run", "--overwrite", *FAST)
    assert_user_error(res, "magic")
    assert _digest(workdir) == before


@pytest.mark.parametrize(("flag", "value", "fragment"), [
    ("--lr", "-0.1", "--lr"),
    ("--lr", "fast", "--lr"),
    ("--weight-decay", "-1", "--weight-decay"),
    ("--alpha", "1e2,-3", "--alpha"),
    ("--beta", "ten", "--beta"),
    ("--steps", "-5", "--steps"),
    ("--anneal", "0:x:3", "--anneal"),
    ("--steps", "10,20", "--steps"),
])
def test_bad_hyperparameter(workdir: Path, flag: str, value: str, fragment: str) -> None:
    before = _digest(workdir)
    res = run_cli("fit", workdir / "good.h5", "--method", "cma", "--out", workdir / "run", "--overwrite",
                  *FAST, flag, value)
    assert_user_error(res, fragment)
    assert _digest(workdir) == before


def test_output_folder_parent_missing(workdir: Path) -> None:
    before = _digest(workdir)
    res = run_cli("fit", workdir / "good.h5", "--method", "erm", "--out", workdir / "no" / "such" / "run", *FAST)
    assert_user_error(res, "does not exist")
    assert _digest(workdir) == before


def test_existing_run_needs_overwrite(workdir: Path) -> None:
    before = _digest(workdir)
    res = run_cli("fit", workdir / "good.h5", "--method", "erm", "--out", workdir / "run", *FAST)
    assert_user_error(res, "--overwrite")
    assert _digest(workdir) == before


def test_output_folder_not_writable(permdir: tuple[Path, list[str]]) -> None:
    folder, prefix = permdir
    locked = folder / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    res = run_cli("fit", folder / "good.h5", "--method", "erm", "--out", locked / "run", *FAST, prefix=prefix,
                  cwd=folder)
    assert_user_error(res, "not writable")
    assert not (locked / "run").exists()


def test_info_on_bad_inputs(workdir: Path) -> None:
    (workdir / "notes.h5").write_text("x")
    assert_user_error(run_cli("info", workdir / "notes.h5"), "not an HDF5 file")
    assert_user_error(run_cli("info", workdir / "missing.h5"), "no such file")


def test_unknown_dataset_and_encoder(tmp_path: Path) -> None:
    assert_user_error(run_cli("extract", "imagenet-z", "--out", tmp_path / "x.h5"), "imagenet-z")
    assert_user_error(run_cli("extract", "demo", "--encoder", "resnet9000", "--out", tmp_path / "x.h5"),
                      "resnet9000")
    assert not (tmp_path / "x.h5").exists()


def test_extract_output_folder_missing(tmp_path: Path) -> None:
    res = run_cli("extract", "demo", "--out", tmp_path / "nowhere" / "x.h5", "--quiet")
    assert_user_error(res, "does not exist")


def test_good_file_fits(workdir: Path) -> None:
    """The control: the same command on the good file succeeds and replaces the old run."""
    res = run_cli("fit", workdir / "good.h5", "--method", "erm", "--out", workdir / "run", "--overwrite", *FAST)
    assert res.code == 0, res.stderr
    assert "previous" not in (workdir / "run" / "summary.json").read_text()


def _rewrite_csv(path: Path, edit) -> None:
    import csv

    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    rows = edit(rows)
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)


def test_metadata_missing_column(tmp_path: Path) -> None:
    from tests.fixtures import formats

    built = formats.waterbirds(tmp_path / "data")
    _rewrite_csv(built.files["metadata"], lambda rows: [r[:3] + r[4:] for r in rows])  # drop `split`
    existing = tmp_path / "wb.h5"
    existing.write_bytes(b"previous result")
    res = run_cli("extract", "waterbirds", "--root", built.root, "--encoder", "efficientnet-lite0",
                  "--out", existing, "--overwrite", "--quiet")
    assert_user_error(res, "metadata.csv", "split")
    assert existing.read_bytes() == b"previous result"


def test_metadata_unknown_split_code(tmp_path: Path) -> None:
    from tests.fixtures import formats

    built = formats.waterbirds(tmp_path / "data")

    def bad_split(rows):
        rows[3][3] = "7"
        return rows

    _rewrite_csv(built.files["metadata"], bad_split)
    res = run_cli("extract", "waterbirds", "--root", built.root, "--encoder", "efficientnet-lite0",
                  "--out", tmp_path / "wb.h5", "--quiet")
    assert_user_error(res, "metadata.csv", "split", "7")
    assert not (tmp_path / "wb.h5").exists()


def test_sigint_during_grid_fit_keeps_finished_configurations(tmp_path: Path) -> None:
    """Ctrl-C in the middle of a grid: exit 130, one line, and whatever was written is
    exactly the cohorts that finished (each seed is a cohort of the stochastic trainer,
    fitted in order)."""
    import signal
    import subprocess
    import sys

    from tests.conftest import REPO, wait_for_chunks

    write_feature_file(tmp_path / "good.h5", toy_arrays(40, 8))
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "fit", str(tmp_path / "good.h5"), "--method", "erm", "--out", str(run),
         "--seed", "0:1999:2000", "--steps", "200", "--batch-size", "16", "--solver", "adam", "--quiet"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Interrupted once its first cohort is kept in the journal: the grid (2000 cohorts of
    # 200 steps) is far too long to finish by then on any machine.
    wait_for_chunks(proc, run, 1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)  # seconds on a quiet machine; a loaded CI runner is slower
    assert proc.returncode == 130, (proc.returncode, err)
    assert "Traceback" not in err
    assert len([ln for ln in err.splitlines() if ln.strip()]) == 1, err
    results = run / "results.jsonl"
    assert results.exists(), "no finished configuration was kept (the machine may be very slow)"
    import json

    rows = [json.loads(line) for line in results.read_text().splitlines()]
    seeds = [r["hparams"]["seed"] for r in rows]
    assert 0 < len(seeds) < 2000 and seeds == list(range(len(seeds)))
    assert all(r["status"] == "ok" for r in rows)
    assert json.loads((run / "summary.json").read_text())["methods"]["erm"]["selected"] is not None
    assert not list(run.glob("*.tmp")) and not list(run.glob(".*.tmp"))
