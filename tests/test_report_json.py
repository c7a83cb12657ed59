"""`--format json`: everything in the report, fractions in [0, 1]."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from probe.reports import build_report, render
from tests.runfolders import GROUPS, expected, two_runs, unselect


@pytest.fixture()
def runs(tmp_path: Path) -> dict[str, Any]:
    return two_runs(tmp_path)


def _data(text: Any) -> dict[str, Any]:
    assert isinstance(text, str)
    return json.loads(text)


def test_json_parses_and_holds_everything(runs: dict[str, Any]) -> None:
    data = _data(render(build_report([runs["a"], runs["b"]]), "json"))
    comp = {c["label"]: c for c in data["comparison"]}
    assert set(comp) == {"cma", "erm"}
    mean, _ = expected(runs["fb"]["rows"]["erm"], "val", "wga")
    assert comp["erm"]["val"]["wga"]["mean"] == pytest.approx(mean)
    assert comp["cma"]["n_seeds"] == 2 and comp["erm"]["n_seeds"] == 3
    assert set(data["per_group"][0]["test"]) == set(GROUPS)
    grid = {g["label"]: g for g in data["grid"]}
    assert grid["cma"]["mode"] == "one-at-a-time"
    assert [s["hparam"] for s in grid["cma"]["slices"]] == ["alpha", "beta", "anneal"]
    for entry in data["comparison"]:
        for split in ("val", "test"):
            assert entry[split]["wga"]["mean"] is not None
            for key, stat in entry[split].items():  # fractions; cross-entropy (ce) is not one
                assert key == "ce" or stat["mean"] is None or 0.0 <= stat["mean"] <= 1.0
    assert [r["name"] for r in data["runs"]] == ["run_a", "run_b"]


def test_nothing_selected_is_null(runs: dict[str, Any]) -> None:
    unselect(runs["b"], "erm")
    data = _data(render(build_report([runs["a"], runs["b"]]), "json"))
    assert data["comparison"][1]["test"]["wga"]["mean"] is None
    assert data["grid"][1]["slices"] == []
