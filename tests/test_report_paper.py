"""--layout paper: the CMA paper's table, methods × (dataset × {Average, Worst-Group}), mean ± SEM."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from base.errors import UserError
from probe.reports import build_report
from probe.reports.formats import render
from tests.conftest import run_cli
from tests.runfolders import CMA_GRID, ERM_GRID, edit_summary, write_run_folder


def _two_datasets(tmp_path: Path) -> tuple[Path, Path, dict]:
    wb = write_run_folder(tmp_path / "wb", {"erm": ERM_GRID, "cma": CMA_GRID}, seeds=(0, 1, 2))
    write_run_folder(tmp_path / "cel", {"erm": ERM_GRID, "cma": CMA_GRID}, seeds=(0, 1, 2))
    edit_summary(tmp_path / "cel", lambda s: s["provenance"]["features"].update(dataset="celeba"))
    return tmp_path / "wb", tmp_path / "cel", wb


def test_the_paper_table_in_markdown_has_sem_over_seeds_and_the_best_in_bold(tmp_path: Path) -> None:
    wb, cel, written = _two_datasets(tmp_path)
    text = render(build_report([wb, cel]), "markdown", "paper")
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    assert lines[0] == ("| Method | Waterbirds Average | Waterbirds Worst-Group | CelebA Average | "
                        "CelebA Worst-Group |")
    assert [ln.split("|")[1].strip() for ln in lines[2:]] == ["ERM", "CMA"]
    # Mean ± SEM (ddof 1) over the three seeds of the selected configuration's test WGA.
    wga = [r["metrics"]["test"]["wga"] for r in written["rows"]["cma"]]
    mean = sum(wga) / 3
    sem = math.sqrt(sum((w - mean) ** 2 for w in wga) / 2 / 3)
    assert f"{100 * mean:.1f} ± {100 * sem:.1f}" in lines[3]
    best = [c.strip() for c in lines[3].split("|")[1:-1]]
    assert any(c.startswith("**") for c in best)  # CMA beats ERM on worst-group accuracy here


def test_the_paper_table_in_latex_groups_columns_by_dataset(tmp_path: Path) -> None:
    wb, cel, _ = _two_datasets(tmp_path)
    tex = render(build_report([wb, cel]), "latex", "paper")
    assert "\\multicolumn{2}{c}{Waterbirds} & \\multicolumn{2}{c}{CelebA}" in tex
    assert "\\cmidrule(lr){2-3} \\cmidrule(lr){4-5}" in tex and "Method & Average & Worst-Group" in tex
    assert "SEM" in tex and tex.count("\\textbf{") >= 4


def test_a_format_without_the_layout_is_refused(tmp_path: Path) -> None:
    wb, cel, _ = _two_datasets(tmp_path)
    with pytest.raises(UserError, match="`layout` 'paper' is not rendered by format 'csv'"):
        render(build_report([wb]), "csv", "paper")
    res = run_cli("report", wb, cel, "--format", "latex", "--layout", "paper")
    assert res.code == 0 and "\\multicolumn{2}{c}{CelebA}" in res.stdout
    res = run_cli("report", wb, "--format", "csv", "--layout", "paper")
    assert res.code == 2 and "--layout 'paper' is not rendered by format 'csv'" in res.stderr
