"""`--format latex`: booktabs tables for a paper, display names, the best test WGA bold."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from probe.reports import build_report, render
from tests.runfolders import CMA_GRID, expected, two_runs, unselect, write_run_folder


@pytest.fixture()
def runs(tmp_path: Path) -> dict[str, Any]:
    return two_runs(tmp_path)


def _comparison(tex: Any) -> str:
    assert isinstance(tex, str)
    return tex.split("\\label{tab:probe-comparison}")[1].split("\\end{table}")[0]


def test_latex_is_booktabs_with_the_best_test_wga_bold(runs: dict[str, Any]) -> None:
    tex = render(build_report([runs["a"], runs["b"]]), "latex")
    assert isinstance(tex, str)
    for token in ("\\toprule", "\\midrule", "\\bottomrule", "\\begin{tabular}", "\\caption{"):
        assert token in tex
    best = expected(runs["fa"]["rows"]["cma"], "test", "wga")
    assert f"\\textbf{{{100 * best[0]:.1f} $\\pm$ {100 * best[1]:.1f}}}" in tex
    assert _comparison(tex).count("\\textbf{") == 1
    assert "selected by validation worst-group accuracy" in tex
    assert "Avg (train-weighted)" in tex and "Avg (group mean)" in tex
    assert "CMA &" in tex and "ERM &" in tex


def test_latex_bolds_every_tied_best(tmp_path: Path) -> None:
    write_run_folder(tmp_path / "one", {"cma": CMA_GRID})
    shutil.copytree(tmp_path / "one", tmp_path / "two")
    comparison = _comparison(render(build_report([tmp_path / "one", tmp_path / "two"]), "latex"))
    assert comparison.count("\\textbf{") == 2
    assert "CMA (one)" in comparison and "CMA (two)" in comparison


def test_nothing_selected_shows_dashes(runs: dict[str, Any]) -> None:
    unselect(runs["b"], "erm")
    tex = render(build_report([runs["a"], runs["b"]]), "latex")
    row = next(line for line in tex.splitlines() if line.startswith("ERM & "))
    assert row.split(" & ")[2:] == ["--"] * 4 + ["-- \\\\"]  # after the budget: every figure a dash


def test_special_characters_are_escaped(tmp_path: Path) -> None:
    write_run_folder(tmp_path / "a_1", {"cma": CMA_GRID})
    write_run_folder(tmp_path / "b&2", {"cma": CMA_GRID})
    tex = _comparison(render(build_report([tmp_path / "a_1", tmp_path / "b&2"]), "latex"))
    assert "CMA (a\\_1)" in tex and "CMA (b\\&2)" in tex
