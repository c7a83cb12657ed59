"""The report's bound-terms table: every method at its selection, mean ± std over seeds."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from probe.reports import build_report, render
from probe.reports.tables import bounds_table, main_tables
from tests.runfolders import CMA_GRID, ERM_GRID, GROUPS, write_run_folder


def test_bound_table_shows_every_method_with_seed_statistics(tmp_path: Path) -> None:
    fa = write_run_folder(tmp_path / "run", {"cma": CMA_GRID, "erm": ERM_GRID, "dfr": {"n_retrains": [20]}},
                          bounds=True)
    report = build_report([tmp_path / "run"])
    table = bounds_table(report)
    assert table is not None and table in main_tables(report)
    assert table.headers == ["Method", "Train rows", *[f"L ({g})" for g in GROUPS], "Δ∇L", "Δ∇²L", "Δ∇³L"]
    assert [r[0] for r in table.rows] == ["cma", "erm", "dfr"]
    hess = [r["bounds"]["hess"] for r in fa["rows"]["cma"]]
    want = f"{statistics.fmean(hess):.3g} ± {statistics.stdev(hess):.2g}"
    assert table.rows[0][-2] == want
    assert table.rows[0][1] == "4795"
    md = render(report, "markdown")
    assert "Transfer-bound terms of the selected configurations" in md and want in md
    js = json.loads(render(report, "json"))
    assert [len(b["seeds"]) for b in js["bounds"]] == [2, 2, 2]


def test_no_bound_table_for_runs_without_bound_terms(tmp_path: Path) -> None:
    write_run_folder(tmp_path / "old", {"erm": ERM_GRID})
    report = build_report([tmp_path / "old"])
    assert bounds_table(report) is None and not any("Transfer-bound" in t.title for t in main_tables(report))
