"""probe reproduce: extract, fit every row of the protocol, write the paper's table, in one command.

Issue 26, items 1-3: a table is only ever made from complete runs of the protocol as asked;
a smoke run lives apart (OUT/smoke/), is marked as such, and never replaces or stands in
for a real run; a reproduction stopped by SIGTERM resumes; reports say when a run is
incomplete, in every format.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from probe.reports import build_report, render
from tests.conftest import REPO, CliResult, assert_user_error, run_cli
from tests.runfolders import ERM_GRID, write_run_folder
from tests.test_extract import make_tiny_clip
from tests.userfiles import snapshot

# `probe` as the console script runs it, except that SIGTERM arrives (as from `kill`) the
# moment the fit's first chunk of heads is safe in its journal: a deterministic interruption.
_TERMINATED_AFTER_FIRST_CHUNK = """
import os, signal, sys
from probe.runs import resume
save = resume.RunSession.save_chunk
def save_then_terminate(self, rows):
    save(self, rows)
    os.kill(os.getpid(), signal.SIGTERM)
resume.RunSession.save_chunk = save_then_terminate
from cli.main import main
main(sys.argv[1:])
"""


def _terminated_after_first_chunk(*args: str | Path) -> CliResult:
    proc = subprocess.run([sys.executable, "-c", _TERMINATED_AFTER_FIRST_CHUNK, *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def _methods(table: str) -> list[str]:
    return [ln.split("|")[1].strip() for ln in table.splitlines() if ln.startswith("| ")][1:]


@pytest.mark.slow
def test_reproduce_smoke_is_kept_apart_marked_resumed_and_never_the_real_table(tmp_path: Path) -> None:
    clip = make_tiny_clip(tmp_path / "clip")
    out = tmp_path / "out"
    demo = ["reproduce", "--demo", "--encoder", "open_clip:tiny", "--weights", f"local-dir:{clip}", "--out", out,
            "--device", "cpu"]
    smoke, run = [*demo, "--smoke"], out / "smoke" / "demo"

    # Item 3: SIGTERM part-way: exit 143, one line, no table; the run says it is incomplete.
    res = _terminated_after_first_chunk(*smoke, "--quiet")
    assert res.code == 143, res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "SIGTERM" in res.stderr and "resumes" in res.stderr
    assert json.loads((run / "summary.json").read_text())["complete"] is False
    assert not (out / "smoke" / "table.md").exists() and not (out / "table.md").exists()
    shown = run_cli("report", run, "--format", "markdown")
    assert shown.code == 0 and "INCOMPLETE RUN" in shown.stdout, shown.stderr
    report = build_report([run])
    for fmt in ("terminal", "latex", "json"):
        from cli.console import as_text

        assert "INCOMPLETE RUN" in as_text(render(report, fmt)), fmt
    assert "INCOMPLETE RUN" in str(render(report, "markdown", "paper"))
    assert json.loads(str(render(report, "json")))["runs"][0]["complete"] is False
    assert "run_complete" in (csv := str(render(report, "csv"))) and ",false," in csv

    # Item 2: whatever run OUT/demo holds (the real one, hours of work) is no business of a smoke test.
    write_run_folder(out / "demo", {"erm": ERM_GRID})
    real = snapshot(out / "demo")

    # The same command again resumes and finishes: every method in a table marked as a smoke test.
    res = run_cli(*smoke)
    assert res.code == 0, res.stderr
    assert "already complete" in res.stderr  # the features are not extracted again
    assert json.loads((run / "summary.json").read_text())["complete"] is True
    table = (out / "smoke" / "table.md").read_text()
    assert _methods(table) == ["ERM", "Fishr", "CORAL", "HGP", "CMA"]
    assert "| Method | Demo (digits) Average | Demo (digits) Worst-Group |" in table
    assert "SMOKE TEST" in table and "mean nothing" in table
    tex = (out / "smoke" / "table.tex").read_text()
    assert "\\textbf{Warning: SMOKE TEST" in tex and "\\multicolumn{2}{c}{Demo (digits)}" in tex
    summary = json.loads((run / "summary.json").read_text())
    assert summary["provenance"]["protocol"]["name"] == "cma-paper"
    assert summary["provenance"]["features"]["path"] == str(out / "demo.h5")
    assert snapshot(out / "demo") == real

    # Item 1: the real command never tabulates the smoke run (here it cannot fit: a 16-column file).
    before = snapshot(out)
    assert_user_error(run_cli(*demo, "--quiet"), "pca_dim")
    assert snapshot(out) == before and not (out / "table.md").exists()


def test_reproduce_needs_a_dataset(tmp_path: Path) -> None:
    assert_user_error(run_cli("reproduce", "--out", tmp_path / "out"), "give at least one dataset")


def test_overwrite_reaches_a_feature_file_of_other_rows(tmp_path: Path) -> None:
    """The refusal of OUT/<dataset>.h5 made with another encoder says to pass `overwrite`:
    reproduce's --overwrite extracts it again (and keeps one of this very extraction)."""
    from base.errors import UserError
    from features.extract import extract
    from probe.study.reproduce import extract_features
    from tests.test_extract import image_spec, tiny_encoder

    spec, h5, said = image_spec(tmp_path / "images", n=12), tmp_path / "out.h5", []
    extract(spec, tiny_encoder(tmp_path, seed=1), h5, batch_size=8, workers=0)
    other = h5.read_bytes()
    enc = tiny_encoder(tmp_path, seed=0)
    with pytest.raises(UserError, match="weights.*`overwrite`"):
        extract_features(spec, enc, h5, False, None, said.append)
    assert h5.read_bytes() == other
    assert extract_features(spec, enc, h5, True, None, said.append).status == "written"
    assert h5.read_bytes() != other and any("extracting it again" in s for s in said), said
    again = h5.read_bytes()
    assert extract_features(spec, enc, h5, True, None, said.append).status == "already complete"
    assert h5.read_bytes() == again
