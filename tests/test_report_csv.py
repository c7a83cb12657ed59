"""`--format csv`: one row per method, fractions, mean and std in their own columns."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest

from probe.reports import build_report, render
from tests.runfolders import GROUPS, expected, two_runs, unselect


@pytest.fixture()
def runs(tmp_path: Path) -> dict[str, Any]:
    return two_runs(tmp_path)


def _rows(text: Any) -> list[dict[str, str]]:
    assert isinstance(text, str)
    return list(csv.DictReader(io.StringIO(text)))


def test_csv_parses_with_fractions(runs: dict[str, Any]) -> None:
    rows = _rows(render(build_report([runs["a"], runs["b"]]), "csv"))
    assert [r["label"] for r in rows] == ["cma", "erm"]
    for r, fixture, method in zip(rows, [runs["fa"], runs["fb"]], ["cma", "erm"], strict=True):
        mean, std = expected(fixture["rows"][method], "test", "wga")
        assert float(r["test_wga_mean"]) == pytest.approx(mean)
        assert float(r["test_wga_std"]) == pytest.approx(std)
        assert json.loads(r["selected_hparams"]) == fixture["selected"][method]
        assert r["run_dir"] == str(runs["a" if method == "cma" else "b"])
        for g in GROUPS:
            assert 0.0 <= float(r[f"test_group[{g}]_acc_mean"]) <= 1.0
            assert int(r[f"test_group[{g}]_n"]) > 0


def test_nothing_selected_is_empty_cells(runs: dict[str, Any]) -> None:
    unselect(runs["b"], "erm")
    erm = _rows(render(build_report([runs["a"], runs["b"]]), "csv"))[1]
    assert erm["n_seeds"] == "0" and erm["test_wga_mean"] == "" and erm["val_acc_std"] == ""
