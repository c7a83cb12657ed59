"""Collapsed heads are named: marked in the results, never selected over a healthy one, counted in reports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from features.store import FeatureSet
from probe.api import fit_grid
from probe.records.metrics import collapsed_heads
from probe.reports import build_report
from probe.reports.tables import COLLAPSE_HINT, selection_table
from tests.test_trainer import waterbirds_like


def test_collapse_rules() -> None:
    y = torch.tensor([0, 0, 1, 1, 1, 0])
    pred = torch.stack([torch.zeros(6, dtype=torch.long),  # one class for every row
                        torch.tensor([0, 1, 1, 0, 1, 1]),  # confident, at chance (3/6 right, majority 1/2)
                        torch.tensor([0, 1, 1, 0, 1, 1]),  # the same predictions, not saturated
                        y])  # confident and right
    conf = torch.tensor([[0.6] * 6, [0.999] * 6, [0.8] * 6, [0.999] * 6])
    assert collapsed_heads(pred, conf, y).tolist() == [True, True, False, False]
    # A split with a single class cannot tell a collapsed head from a right one.
    assert collapsed_heads(pred[:1], conf[:1], torch.zeros(6, dtype=torch.long)).tolist() == [False]


def wide_offset_features() -> FeatureSet:
    """Wide features far from the origin (large ‖x̃‖): with the penalties unscaled, a Hessian
    weight that outweighs the loss makes the head escape by predicting one class."""
    fs = waterbirds_like(n=(300, 200, 200), d=256, seed=0, core=0.5, spurious=1.0)
    return FeatureSet((fs.features + 3.0).astype(np.float32), fs.y, fs.a, fs.group, fs.split, fs.ids,
                      fs.class_names, fs.group_names, path="<wide>")


def test_a_dominant_hessian_penalty_collapses_and_is_not_selected(tmp_path: Path) -> None:
    res = fit_grid(wide_offset_features(), ["cma"], {"alpha": [0.0], "beta": [0.0, 1e2], "anneal": [0],
                                                    "preprocess": ["none"]},
                   tmp_path / "run", steps=100, batch_size=128, eval_every=20, normalize="none", device="cpu")
    healthy, dominated = res["rows"]["cma"]
    assert healthy.status == "ok" and dominated.status == "collapsed"
    assert dominated.metrics["val"]["wga"] == 0.0  # every row one class
    summary = res["summary"].methods["cma"]
    assert summary.selected.hparams["beta"] == 0.0 and summary.count("n_collapsed") == 1
    rows = [json.loads(line) for line in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    assert [r["status"] for r in rows] == ["ok", "collapsed"]
    table = selection_table(build_report([tmp_path / "run"]))
    assert table.rows[0][table.headers.index("Collapsed fits")] == "1" and table.caption == COLLAPSE_HINT


def test_collapsed_configurations_are_selected_only_when_nothing_else_is_left(tmp_path: Path) -> None:
    res = fit_grid(wide_offset_features(), ["cma"], {"alpha": [0.0], "beta": [1e2, 1e3], "anneal": [0],
                                                    "preprocess": ["none"]},
                   None, steps=60, batch_size=128, eval_every=20, normalize="none", device="cpu")
    assert {r.status for r in res["rows"]["cma"]} == {"collapsed"}
    from probe.runs.selection import select

    assert select(res["rows"]["cma"]) is not None
