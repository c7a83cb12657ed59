"""probe.reports.plots: heatmaps over alpha × beta, per-group bars, curves, as PNG files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from base.errors import UserError
from probe.reports import build_report
from probe.reports.plots import heatmap_grid, slug, write_plots
from tests.runfolders import CMA_GRID, expected, two_runs

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture()
def runs(tmp_path: Path) -> dict[str, Any]:
    return two_runs(tmp_path)


def test_heatmap_cells_take_the_best_validation_config(runs: dict[str, Any]) -> None:
    (m,) = build_report([runs["a"]]).methods
    grid = heatmap_grid(m)
    assert grid is not None
    alphas, betas, cells = grid
    assert alphas == [10.0, 100.0, 1000.0, 1e4] and betas == [1.0, 10.0]
    results = [json.loads(x) for x in (runs["a"] / "results.jsonl").read_text().splitlines()]
    for i, a in enumerate(alphas[:3]):
        for j, b in enumerate(betas):
            by_anneal = {}
            for anneal in CMA_GRID["anneal"]:
                rows = [r for r in results if r["hparams"]["alpha"] == a
                        and r["hparams"]["beta"] == b and r["hparams"]["anneal"] == anneal]
                by_anneal[anneal] = expected(rows, "val", "wga")[0]
            assert cells[i][j].hparams["anneal"] == max(by_anneal, key=by_anneal.get)
    assert cells[3][0].status == "2/2 diverged" and cells[3][1] is None


def test_plots_are_png_files(runs: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "figs" / "nested"
    paths = write_plots([runs["a"], runs["b"]], out)
    assert sorted(p.name for p in paths) == [
        "curves_cma.png", "curves_erm.png", "per_group_test_acc.png", "wga_heatmap_cma.png"]
    for p in paths:
        data = p.read_bytes()
        assert data[:8] == PNG_SIGNATURE and len(data) > 1000
        with Image.open(p) as im:
            assert im.size[0] > 400 and im.size[1] > 300
    assert sorted(out.iterdir()) == sorted(paths)  # no temporary files left behind


def test_plots_refuse_a_file_as_folder(runs: dict[str, Any], tmp_path: Path) -> None:
    f = tmp_path / "afile"
    f.write_text("x")
    # The API's name for the folder; the CLI shows it as --plots (tests/test_report_cli.py).
    with pytest.raises(UserError, match=r"^`plots` .*afile is a file"):
        write_plots([runs["a"]], f)


def test_file_names_come_from_labels() -> None:
    assert slug("cma (x/run)") == "cma_x_run" and slug("///") == "run"


def test_bound_terms_figure_averages_seeds_and_draws_closed_form_fits(tmp_path: Path) -> None:
    from probe.reports.plots import bound_curves, bounds_figure
    from tests.runfolders import ERM_GRID, write_run_folder

    write_run_folder(tmp_path / "run", {"cma": CMA_GRID, "erm": ERM_GRID, "dfr": {"n_retrains": [20]}},
                     bounds=True)
    report = build_report([tmp_path / "run"])
    cma, erm, dfr = report.methods
    steps, series, kept = bound_curves(cma)
    rows = cma.selected_rows
    assert len(rows) == 2 and kept == rows[0].bounds["step"]
    mean = [(a + b) / 2 for a, b in zip(rows[0].bounds["curve"]["hess"], rows[1].bounds["curve"]["hess"],
                                        strict=True)]
    assert series["hess"].tolist() == pytest.approx(mean)
    assert bound_curves(dfr) is None and dfr.bound_stats() is not None
    fig = bounds_figure(report)
    ax = fig.axes[1]  # n = 2
    labels = [line.get_label() for line in ax.get_lines()]
    assert "cma" in labels and "erm" in labels and "dfr (closed form)" in labels
    assert "bound_terms.png" in [p.name for p in write_plots(report, tmp_path / "figs")]
