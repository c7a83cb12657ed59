"""DFR: group-balanced subsets, C chosen on held-out validation, averaged coefficients."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from features.store import read_features
from probe import dfr
from tests.h5craft import toy_arrays, write_feature_file


def test_balanced_subsets_have_equal_group_counts() -> None:
    group = np.array([0] * 10 + [1] * 3 + [2] * 7)
    sub = dfr._balanced(np.arange(20), group, np.random.default_rng(0))
    assert np.bincount(group[sub]).tolist() == [3, 3, 3]
    assert len(set(sub.tolist())) == len(sub)


def test_fit_dfr_head_is_the_average_and_matches_its_metrics(tmp_path: Path) -> None:
    fs = read_features(write_feature_file(tmp_path / "t.h5", toy_arrays(30, 6)))
    row = dfr.fit_dfr(fs, seed=0, n_retrains=3)
    assert row["hparams"]["C"] in dfr.C_OPTIONS
    theta = row["_theta"].double().numpy()
    assert theta.shape == (2, 7) and np.allclose(theta[0], 0)  # binary LR as a 2-row softmax head
    Z = (fs.features - row["_pre"]["mean"].numpy()) / row["_pre"]["scale"].numpy()
    pred = (np.c_[Z, np.ones(len(Z))] @ theta.T).argmax(1)
    te = fs.split == 2
    assert abs((pred[te] == fs.y[te]).mean() - row["metrics"]["test"]["acc"]) < 1e-12
    # Same seed, same head.
    again = dfr.fit_dfr(fs, seed=0, n_retrains=3)
    assert np.array_equal(again["_theta"].numpy(), row["_theta"].numpy())
