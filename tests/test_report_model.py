"""The report model: selections from summary.json, grids from results.jsonl, labels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from probe.reports import build_report, display_name
from probe.reports.tables import paper_label
from tests.runfolders import CMA_GRID, edit_summary, expected, two_runs, write_run_folder


@pytest.fixture()
def runs(tmp_path: Path) -> dict[str, Any]:
    return two_runs(tmp_path)


def test_report_uses_the_summary_selection(runs: dict[str, Any]) -> None:
    report = build_report([runs["a"]])
    (m,) = report.methods
    assert m.selected == runs["fa"]["selected"]["cma"]
    assert m.selected_config is not None
    assert [r.run_id for r in m.selected_config.rows] == m.run_ids
    assert m.n_seeds == 2 and m.n_diverged == 2 and m.n_configs == 13
    assert m.varied == ["alpha", "beta", "anneal"]


def test_results_fill_in_a_summary_without_seed_statistics(runs: dict[str, Any]) -> None:
    edit_summary(runs["a"], lambda s: s["methods"]["cma"].pop("seeds"))
    (m,) = build_report([runs["a"]]).methods
    mean, std = expected(runs["fa"]["rows"]["cma"], "test", "wga")
    assert m.get("test", "wga").mean == pytest.approx(mean)
    assert m.get("test", "wga").std == pytest.approx(std)


def test_same_method_in_two_folders_is_labelled_by_folder(tmp_path: Path) -> None:
    write_run_folder(tmp_path / "run_a", {"cma": CMA_GRID})
    write_run_folder(tmp_path / "run_c", {"cma": {"alpha": [10.0, 100.0], "beta": [1.0],
                                                  "anneal": [0]}})
    report = build_report([tmp_path / "run_a", tmp_path / "run_c"])
    assert [m.label for m in report.methods] == ["cma (run_a)", "cma (run_c)"]
    assert [paper_label(m) for m in report.methods] == ["CMA (run_a)", "CMA (run_c)"]
    # Same folder name under different parents: the parent tells them apart.
    write_run_folder(tmp_path / "x" / "run", {"cma": CMA_GRID})
    write_run_folder(tmp_path / "y" / "run", {"cma": CMA_GRID})
    labels = [m.label for m in build_report([tmp_path / "x" / "run", tmp_path / "y" / "run"]).methods]
    assert labels == ["cma (x/run)", "cma (y/run)"]
    # The same folder twice: numbered.
    twice = build_report([tmp_path / "run_a", tmp_path / "run_a"])
    assert [r.name for r in twice.runs] == ["run_a", "run_a#2"]


def test_display_names_for_papers() -> None:
    assert display_name("cma") == "CMA" and display_name("irm") == "IRMv1"
    assert display_name("my-method") == "my-method"


def test_grid_slices_vary_one_hyperparameter_at_a_time(runs: dict[str, Any]) -> None:
    (m,) = build_report([runs["a"]]).methods
    sel = runs["fa"]["selected"]["cma"]
    slices = {k: (fixed, configs) for k, fixed, configs in m.grid_slices()}
    fixed, configs = slices["alpha"]
    assert fixed == {"beta": sel["beta"], "anneal": sel["anneal"]}
    # The diverged alpha=1e4 configuration shares beta=1, anneal=100 with the selection.
    assert [c.hparams["alpha"] for c in configs] == [10.0, 100.0, 1000.0, 1e4]
    assert configs[-1].status == "2/2 diverged"
    assert configs[-1].get("val", "wga").mean is None
    assert sum(c is m.selected_config for c in configs) == 1
    results = [json.loads(x) for x in (runs["a"] / "results.jsonl").read_text().splitlines()]
    for c in configs[:-1]:
        rows = [r for r in results if r["hparams"]["alpha"] == c.hparams["alpha"]
                and r["hparams"]["beta"] == sel["beta"] and r["hparams"]["anneal"] == sel["anneal"]]
        assert c.get("val", "wga").mean == pytest.approx(expected(rows, "val", "wga")[0])
    assert [c.hparams["anneal"] for c in slices["anneal"][1]] == [0, 100]


def test_integer_and_float_values_are_one_configuration(tmp_path: Path) -> None:
    """1000 and 1000.0 are the same hyperparameter value, as in selection (probe.records.results.config_key)."""
    run = tmp_path / "run"
    write_run_folder(run, {"cma": {"alpha": [1000.0], "beta": [1.0, 10.0], "anneal": [0]}})
    lines = (run / "results.jsonl").read_text().splitlines()
    rows = [json.loads(x) for x in lines]
    rows[1]["hparams"]["alpha"] = 1000  # the second seed of the first configuration
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (m,) = build_report([run]).methods
    assert [c.n_seeds for c in m.configs] == [2, 2] and m.varied == ["beta"]


def test_selection_by_val_acc_is_named(runs: dict[str, Any]) -> None:
    edit_summary(runs["a"], lambda s: s["provenance"].__setitem__("selection", "val_acc"))
    report = build_report([runs["a"]])
    assert report.selection() == "validation accuracy"
    assert report.selection(long=True) == "validation accuracy"
    both = build_report([runs["a"], runs["b"]])
    assert both.selection() == "validation WGA or validation accuracy (per run)"


def test_labels_show_gamma_when_nonzero_and_a_gamma_axis_when_searched(tmp_path: Path) -> None:
    base = {"alpha": [10.0, 100.0], "beta": [1.0], "anneal": [0]}
    write_run_folder(tmp_path / "off", {"cma": {**base, "gamma": [0.0]}})
    write_run_folder(tmp_path / "on", {"cma": {**base, "gamma": [5.0]}})
    write_run_folder(tmp_path / "axis", {"cma": {**base, "gamma": [0.0, 5.0]}})
    off, on, axis = (build_report([tmp_path / n]).methods[0] for n in ("off", "on", "axis"))
    assert off.short_hparams == "alpha=100"
    assert on.short_hparams == "alpha=100, gamma=5"  # not searched, but a term off by default is on
    assert axis.varied == ["alpha", "gamma"]
    assert [k for k, _, _ in axis.grid_slices()] == ["alpha", "gamma"]
    assert axis.short_hparams.startswith("alpha=100, gamma=")
