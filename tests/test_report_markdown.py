"""`--format markdown`: one comparison table over folders, bold best, every section."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from probe.reports import build_report, render
from tests.runfolders import (
    CMA_GRID,
    edit_summary,
    expected,
    pct,
    two_runs,
    unselect,
    write_run_folder,
)

COMPARISON_HEADER = (
    "| Method | Seeds | Budget | Val WGA | Test WGA | Test Acc | Test Avg (train-weighted) "
    "| Test Avg (group mean) |"
)


@pytest.fixture()
def runs(tmp_path: Path) -> dict[str, Any]:
    return two_runs(tmp_path)


def test_one_comparison_table_over_two_folders(runs: dict[str, Any]) -> None:
    report = build_report([runs["a"], runs["b"]])
    md = render(report, "markdown")
    assert isinstance(md, str) and md.startswith("# probe report")
    assert md.count(COMPARISON_HEADER) == 1
    lines = md.splitlines()
    start = lines.index(COMPARISON_HEADER)
    rows = lines[start + 2:start + 4]
    for row, method, fixture in zip(rows, ["cma", "erm"], [runs["fa"], runs["fb"]], strict=True):
        sel = fixture["rows"][method]
        assert row.startswith(f"| {method} | {len(sel)} |")
        for split, key in [("val", "wga"), ("test", "acc"), ("test", "acc_train_weighted"),
                           ("test", "acc_group_mean")]:
            assert pct(*expected(sel, split, key)) in row
    # cma has the best test WGA: bold in Markdown.
    assert f"**{pct(*expected(runs['fa']['rows']['cma'], 'test', 'wga'))}**" in rows[0]
    for section in ("## Selected configurations", "## Per-group test accuracy",
                    "## Grid around each selection", "### cma: alpha varied", "### erm: weight_decay varied"):
        assert section in md


def test_methods_from_two_folders_share_the_table(tmp_path: Path) -> None:
    write_run_folder(tmp_path / "run_a", {"cma": CMA_GRID})
    write_run_folder(tmp_path / "run_c", {"cma": {"alpha": [10.0, 100.0], "beta": [1.0], "anneal": [0]}})
    md = render(build_report([tmp_path / "run_a", tmp_path / "run_c"]), "markdown")
    assert md.count(COMPARISON_HEADER) == 1
    assert "| cma (run_a) |" in md and "| cma (run_c) |" in md


def test_a_single_configuration_is_named_not_tabled(runs: dict[str, Any], tmp_path: Path) -> None:
    write_run_folder(tmp_path / "one", {"erm": {"weight_decay": [0.0]}}, seeds=(0,))
    md = render(build_report([runs["a"], tmp_path / "one"]), "markdown")
    assert "- erm: one configuration, nothing varied\n" in md
    assert "erm: weight_decay varied" not in md


def test_selection_by_val_acc_is_named(runs: dict[str, Any]) -> None:
    edit_summary(runs["a"], lambda s: s["provenance"].__setitem__("selection", "val_acc"))
    md = render(build_report([runs["a"]]), "markdown")
    comparison = md.split("\n## ")[1]  # the comparison table's section
    assert "selected by validation accuracy" in comparison and "validation WGA" not in comparison
    assert "| validation accuracy * |" in md  # the rules table marks the headline rule


def test_a_method_with_nothing_selected_shows_dashes(runs: dict[str, Any]) -> None:
    unselect(runs["b"], "erm")
    md = render(build_report([runs["a"], runs["b"]]), "markdown")
    row = next(line for line in md.splitlines() if line.startswith("| erm | 0 |"))
    assert row.split(" | ")[3:] == ["–"] * 4 + ["– |"]  # after the budget: every figure a dash
