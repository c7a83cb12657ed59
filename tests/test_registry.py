"""Everything derived from the method registry stays derived: each registered method fits
through the one entry point, and the CLI, the estimator and the reports list it."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from cli.fit import grid_options
from features.store import read_features
from probe.api import LinearHead, fit_grid
from probe.methods import COMMON, REGISTRY, all_params, method_names
from probe.reports.model import display_name
from tests.h5craft import toy_arrays, write_feature_file


@pytest.mark.parametrize("name", method_names())
def test_every_registered_method_fits_through_fit_grid(tmp_path: Path, name: str) -> None:
    fs = read_features(write_feature_file(tmp_path / "toy.h5", toy_arrays(16, 5), prompts=True))
    rows = fit_grid(fs, [name], {}, None, steps=6, batch_size=16, eval_every=3)["rows"][name]
    assert len(rows) == len(REGISTRY[name].configs({}, 6))
    # on 16 rows a group, a strongly regularised grid point may collapse (cb-llr's weight decay 0.1 on
    # half of validation predicts one class): a fate the run reports, not a failure to fit
    assert all(r.method == name and r.status in ("ok", "collapsed") and r.metrics["test"]["wga"] is not None
               for r in rows)
    assert any(r.status == "ok" for r in rows)
    assert [r.run_id for r in rows] == [f"{name}-{i:04d}" for i in range(len(rows))]


def test_cli_flags_estimator_parameters_and_labels_come_from_the_registry() -> None:
    assert {o.name for o in grid_options()} == set(all_params())
    sig = inspect.signature(LinearHead)
    assert set(all_params()) <= set(sig.parameters)
    assert all(sig.parameters[n].default == p.default for n, p in COMMON.items())
    assert LinearHead("cma", alpha=3.0).get_params()["alpha"] == 3.0
    for name, cls in REGISTRY.items():
        assert display_name(name) == cls.display
    assert display_name("a-method-of-an-older-version") == "a-method-of-an-older-version"
