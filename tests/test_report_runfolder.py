"""Reading run folders: damaged ones are one-line errors naming the file; old ones still load."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from base.errors import UserError
from probe.records.results import Result
from probe.reports import build_report, load_run
from tests.runfolders import broken, two_runs


@pytest.fixture()
def runs(tmp_path: Path) -> dict[str, Any]:
    return two_runs(tmp_path)


BROKEN = ["missing_dir", "file", "no_summary", "no_results", "bad_summary", "bad_results",
          "no_methods", "row_without_hparams"]


@pytest.mark.parametrize("what", BROKEN)
def test_bad_run_folders_are_one_line_user_errors(
    what: str, runs: dict[str, Any], tmp_path: Path
) -> None:
    path, needle = broken(tmp_path, runs, what)
    with pytest.raises(UserError) as info:
        build_report([path])
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_rows_are_typed_results(runs: dict[str, Any]) -> None:
    run = load_run(runs["a"])
    assert all(isinstance(r, Result) for r in run.results)
    assert [r.run_id for r in run.results][:2] == ["cma-0000", "cma-0001"]
    assert run.group_names == runs["fa"]["summary"]["group_names"]
    assert run.selection == "val_wga" and run.features["dataset"] == "waterbirds"


def test_old_rows_still_load(tmp_path: Path) -> None:
    """Rows of earlier versions: no run_id, steps or history, null best_step, no tuned."""
    run = tmp_path / "old"
    run.mkdir()
    metrics = {"acc": 0.9, "acc_train_weighted": 0.9, "acc_group_mean": 0.8, "wga": 0.7,
               "per_group": {"g0": {"acc": 0.9, "n": 10}, "g1": {"acc": 0.7, "n": 5}}}
    rows = [{"method": "erm", "hparams": {"weight_decay": wd, "seed": 0}, "best_step": None,
             "metrics": {"train": metrics, "val": metrics, "test": metrics}}
            for wd in (0.0, 0.001)]
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "summary.json").write_text(json.dumps({"methods": {"erm": {
        "selected": {"hparams": {"weight_decay": 0.001}}}}}))
    (m,) = build_report([run]).methods
    assert m.selected_config is not None and m.selected_config.hparams == {"weight_decay": 0.001}
    assert m.n_seeds == 1 and m.get("test", "wga").mean == pytest.approx(0.7)
    assert m.varied == ["weight_decay"] and m.selected_rows[0].history["step"] == []
