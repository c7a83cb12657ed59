"""--protocol cma-paper: one word for the authors' comparison, resolved per dataset, overridable, recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from base.errors import UserError
from probe.api import fit_grid
from probe.methods.protocols import resolve
from tests.conftest import assert_user_error, run_cli
from tests.h5craft import toy_arrays, write_feature_file


def test_resolution_per_dataset() -> None:
    wb = resolve("cma-paper", "waterbirds", 4795, 2)
    assert wb.settings["steps"] == 3000 and wb.settings["isr_class"] == 0  # 300 epochs × 10 batches of 500
    assert wb.grids["cma"]["anneal"] == [0, 700, 1400, 2100, 2800]
    assert len(wb.grids["cma"]["alpha"]) == 8 and wb.grids["cma"]["seed"] == [0, 1, 2, 3, 4]
    assert len(wb.grids["hgp"]["beta"]) == 9 and len(wb.grids["coral"]["gamma"]) == 50
    assert wb.method_settings["cma"]["normalize"] == "dC" and wb.settings["normalize"] == "none"
    assert resolve("cma-paper", "celeba", 162770, 2).settings["steps"] == 50 * 326
    mnli = resolve("cma-paper", "multinli", 206175, 3)
    assert mnli.settings["isr_class"] == 2 and mnli.settings["steps"] == 3 * 413
    assert resolve("cma-paper", "demo", 898, 2).settings["isr_class"] == 0  # Waterbirds' choices
    with pytest.raises(UserError, match="`protocol` cma-paper has choices for waterbirds"):
        resolve("cma-paper", "table", 100, 2)
    with pytest.raises(UserError, match="`protocol` 'nope' is unknown"):
        resolve("nope", "waterbirds", 100, 2)


def test_the_protocol_runs_all_five_rows_and_records_what_it_resolved(tmp_path: Path) -> None:
    path = write_feature_file(tmp_path / "wb.h5", toy_arrays(12, 6), dataset="waterbirds")
    # Explicit values override the protocol (and are recorded as overrides): a tiny version.
    grid = {"seed": [0], "alpha": [1.0], "beta": [10.0], "lam": [100.0], "ema": [0.9], "gamma": [1.0],
            "anneal": [0]}
    res = fit_grid(path, None, grid, tmp_path / "run", protocol="cma-paper", steps=20, pca_dim=4)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert list(summary["methods"]) == ["erm", "fishr", "coral", "hgp", "cma"]
    prov = summary["provenance"]["protocol"]
    assert prov["name"] == "cma-paper" and prov["dataset"] == "waterbirds"
    assert prov["settings"]["optimizer"] == "sgd" and prov["settings"]["bias"] is False
    assert prov["overrides"]["settings"] == {"steps": 20, "pca_dim": 4} and "alpha" in prov["overrides"]["grid"]
    assert summary["provenance"]["settings"]["steps"] == 20  # the override won
    assert summary["provenance"]["method_settings"]["cma"]["normalize"] == "dC"
    cma = res["rows"]["cma"][0]
    assert cma.hparams["preprocess"] == "pca+isr-mean" and cma.theta.shape == (2, 4)  # bias-free, 4 dims
    assert all(rows for rows in res["rows"].values())


def test_the_cli_names_a_bad_protocol_and_a_dataset_it_does_not_know(tmp_path: Path) -> None:
    path = write_feature_file(tmp_path / "toy.h5")
    assert_user_error(run_cli("fit", path, "--protocol", "nope", "--out", tmp_path / "r", "-q"), "--protocol")
    assert_user_error(run_cli("fit", path, "--protocol", "cma-paper", "--out", tmp_path / "r", "-q"),
                      "--protocol cma-paper has choices", "'toy'")
