"""DFR(Val): group-balanced subsets, C chosen on held-out validation, averaged coefficients."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from features.store import read_features
from probe.api import fit_grid
from probe.methods import dfr
from tests.h5craft import toy_arrays, write_feature_file


def test_balanced_subsets_have_equal_group_counts() -> None:
    group = np.array([0] * 10 + [1] * 3 + [2] * 7)
    sub = dfr._balanced(np.arange(20), group, np.random.default_rng(0))
    assert np.bincount(group[sub]).tolist() == [3, 3, 3]
    assert len(set(sub.tolist())) == len(sub)


def test_fit_dfr_head_is_the_average_and_matches_its_metrics(tmp_path: Path) -> None:
    fs = read_features(write_feature_file(tmp_path / "t.h5", toy_arrays(30, 6)))
    row = dfr.fit_dfr(fs, seed=0, n_retrains=3)
    assert row.tuned["C"] in dfr.C_OPTIONS and "C" not in row.hparams
    theta = row.theta.double().numpy()
    assert theta.shape == (2, 7) and np.allclose(theta[0], 0)  # binary LR as a 2-row softmax head
    # The final scaler is the training split's (as the authors' dfr_on_validation_eval).
    train = fs.split == 0
    np.testing.assert_allclose(row.pre["mean"].numpy(), fs.features[train].mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(row.pre["scale"].numpy(), fs.features[train].std(0), rtol=1e-5)
    Z = (fs.features - row.pre["mean"].numpy()) / row.pre["scale"].numpy()
    pred = (np.c_[Z, np.ones(len(Z))] @ theta.T).argmax(1)
    te = fs.split == 2
    assert abs((pred[te] == fs.y[te]).mean() - row.metrics["test"]["acc"]) < 1e-12
    again = dfr.fit_dfr(fs, seed=0, n_retrains=3)
    assert np.array_equal(again.theta.numpy(), row.theta.numpy())


def test_tuning_picks_the_best_held_out_wga_first_on_ties(tmp_path: Path) -> None:
    fs = read_features(write_feature_file(tmp_path / "t.h5", toy_arrays(30, 6)))
    best, scores = dfr.tune_c(fs, np.random.default_rng(3), 3)
    assert set(scores) == set(dfr.C_OPTIONS)
    top = max(scores.values())
    assert scores[best] == top
    assert best == next(c for c in dfr.C_OPTIONS if scores[c] == top)


def test_dfr_seeds_form_one_configuration_in_the_run(tmp_path: Path) -> None:
    fs = read_features(write_feature_file(tmp_path / "t.h5", toy_arrays(20, 6)))
    res = fit_grid(fs, ["dfr"], {"seed": [0, 1, 2]}, tmp_path / "run")
    sel = res["summary"].methods["dfr"].selected
    assert sel.run_ids == ["dfr-0000", "dfr-0001", "dfr-0002"]
    assert res["summary"].methods["dfr"].seeds["test"].n_seeds == 3
