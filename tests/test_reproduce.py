"""probe reproduce: extract, fit every row of the protocol, write the paper's table, in one command."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import assert_user_error, run_cli
from tests.test_extract import make_tiny_clip


def test_reproduce_runs_end_to_end_on_the_bundled_demo(tmp_path: Path) -> None:
    clip = make_tiny_clip(tmp_path / "clip")
    out = tmp_path / "out"
    args = ["reproduce", "--demo", "--encoder", "open_clip:tiny", "--weights", f"local-dir:{clip}", "--smoke",
            "--out", out, "--device", "cpu"]
    res = run_cli(*args, "--quiet")
    assert res.code == 0, res.stderr
    table = (out / "table.md").read_text()
    assert "| Method | Demo (digits) Average | Demo (digits) Worst-Group |" in table
    assert [ln.split("|")[1].strip() for ln in table.splitlines() if ln.startswith("| ")][1:] == \
        ["ERM", "Fishr", "CORAL", "HGP", "CMA"]
    assert "\\multicolumn{2}{c}{Demo (digits)}" in (out / "table.tex").read_text()
    summary = json.loads((out / "demo" / "summary.json").read_text())
    assert summary["provenance"]["protocol"]["name"] == "cma-paper"
    assert summary["provenance"]["features"]["path"] == str(out / "demo.h5")
    again = run_cli(*args)  # the features are there: not extracted again
    assert again.code == 0 and "already complete" in again.stderr


def test_reproduce_needs_a_dataset(tmp_path: Path) -> None:
    assert_user_error(run_cli("reproduce", "--out", tmp_path / "out"), "give at least one dataset")
