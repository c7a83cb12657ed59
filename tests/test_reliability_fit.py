"""Issue 17 for `probe fit` (all but the run-folder items): DFR at any number of classes against
scikit-learn itself, settings a file cannot support refused up front, and the questionable cases
of item 13 decided (a file with no feature columns, a single-class file, an impossible
`--pca-dim`): each refused with one line, exit 2, and nothing written.

The command-line cases run the CLI in a fresh interpreter, as a user would.
"""

from __future__ import annotations

import json
import resource
from pathlib import Path

import numpy as np
import pytest

from features.store import read_features
from probe.methods import dfr
from tests.conftest import assert_user_error, run_cli
from tests.h5craft import toy_arrays, write_feature_file
from tests.userfiles import snapshot

FAST = ["--steps", "20", "--quiet"]


def three_classes(n_per_cell: int = 20, dim: int = 6, seed: int = 0) -> tuple[dict[str, np.ndarray], dict]:
    """A MultiNLI-shaped task: 3 classes x 2 attribute values, every (group, split) cell filled."""
    rng = np.random.default_rng(seed)
    cells = [(y, a, s) for s in (0, 1, 2) for y in range(3) for a in range(2) for _ in range(n_per_cell)]
    y, a, split = (np.array(c) for c in zip(*cells, strict=True))
    feats = rng.normal(size=(len(y), dim)).astype(np.float32)
    feats[np.arange(len(y)), y] += 2.5  # each class its own direction
    feats[:, 3] += 1.5 * a  # and a spurious one
    arrays = {"features": feats, "y": y.astype(np.int64), "a": a.astype(np.int64),
              "group": (2 * y + a).astype(np.int64), "split": split.astype(np.int8)}
    names = {"class_names": ["contradiction", "entailment", "neutral"],
             "group_names": [f"{c}/{n}" for c in ("c", "e", "n") for n in ("no_neg", "neg")]}
    return arrays, names


def _l1_logistic(c: float) -> object:
    """scikit-learn's L1 logistic regression by liblinear, spelled as the installed version wants it."""
    import sklearn
    from sklearn.linear_model import LogisticRegression

    new = tuple(int(v) for v in sklearn.__version__.split(".")[:2]) >= (1, 8)
    return LogisticRegression(C=c, solver="liblinear", random_state=0,
                              **({"l1_ratio": 1.0} if new else {"penalty": "l1"}))


@pytest.mark.parametrize("classes", [2, 3])
def test_dfr_head_predicts_as_scikit_learn(tmp_path: Path, classes: int) -> None:
    """With one retrain the DFR head is one L1 logistic regression (one-vs-rest for C > 2) on one
    group-balanced validation subsample, standardized with the training split's scaler."""
    from sklearn.multiclass import OneVsRestClassifier

    arrays, names = (toy_arrays(30, 6), {}) if classes == 2 else three_classes()
    fs = read_features(write_feature_file(tmp_path / "t.h5", arrays, **names))
    row = dfr.fit_dfr(fs, seed=0, n_retrains=1)
    # The same random draws as fit_dfr: the tuning split and subsample first, then the retrain's.
    rng = np.random.default_rng(0)
    best_c, _ = dfr.tune_c(fs, rng, 0)
    assert best_c == row.tuned["C"]
    sub = dfr._balanced(np.flatnonzero(fs.split == 1), fs.group, rng)
    train = fs.features[fs.split == 0]
    std = train.std(0)
    Z = (fs.features - train.mean(0)) / np.where(std > 0, std, 1.0)
    model = _l1_logistic(best_c)
    reference = (model if classes == 2 else OneVsRestClassifier(model)).fit(Z[sub], fs.y[sub])
    test = fs.split == 2
    expected = reference.predict(Z[test])
    theta = row.theta.double().numpy()
    assert theta.shape == (classes, fs.features.shape[1] + 1)
    Zh = (fs.features - row.pre["mean"].numpy()) / row.pre["scale"].numpy()
    got = (Zh @ theta[:, :-1].T + theta[:, -1]).argmax(1)
    np.testing.assert_array_equal(got[test], expected)
    assert row.metrics["test"]["acc"] == pytest.approx(float((expected == fs.y[test]).mean()), abs=1e-12)
    per_group = [float((expected[fs.group[test] == g] == fs.y[test][fs.group[test] == g]).mean())
                 for g in range(len(fs.group_names))]
    assert row.metrics["test"]["wga"] == pytest.approx(min(per_group), abs=1e-12)


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A folder holding the user's files: a previous run that must survive."""
    prev = tmp_path / "run"
    prev.mkdir()
    (prev / "summary.json").write_text('{"previous": true}\n')
    return tmp_path


def _fit_refused(work: Path, feature_file: Path, *fragments: str, extra: tuple[str, ...] = ()) -> None:
    before = snapshot(work)
    res = run_cli("fit", feature_file, "--out", work / "run", "--overwrite", *FAST, *extra)
    assert_user_error(res, *fragments)
    assert snapshot(work) == before


def test_binary_hessian_on_three_classes(work: Path) -> None:
    arrays, names = three_classes()
    path = write_feature_file(work / "mnli.h5", arrays, **names)
    _fit_refused(work, path, "--hessian-method", "binary", "3", extra=("--method", "cma", "--hessian-method",
                                                                          "binary"))


def test_absurd_grid_refused_before_it_is_built(work: Path) -> None:
    path = write_feature_file(work / "toy.h5")
    _fit_refused(work, path, "--alpha", "1000000000 values", extra=("--method", "cma", "--alpha", "0:1:1e9"))
    # Refused before allocating: 1e9 values would be 8 GB; no child came near that.
    assert resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss < 4 << 20  # KiB: 4 GiB


def test_no_feature_columns(work: Path) -> None:
    arrays = toy_arrays()
    arrays["features"] = np.zeros((len(arrays["y"]), 0), np.float32)
    _fit_refused(work, write_feature_file(work / "empty.h5", arrays), "empty.h5", "no columns",
                 extra=("--method", "erm"))


def test_single_class(work: Path) -> None:
    arrays = toy_arrays()
    keep = arrays["y"] == 0
    arrays = {k: v[keep] for k, v in arrays.items()}
    arrays["group"] = arrays["a"]
    path = write_feature_file(work / "one.h5", arrays, class_names=["small"], group_names=["blue", "green"])
    _fit_refused(work, path, "one.h5", "single class", extra=("--method", "erm"))


def test_pca_dim_beyond_the_training_rows(work: Path) -> None:
    arrays = toy_arrays(10, 200)  # 40 training rows, 200 columns
    path = write_feature_file(work / "wide.h5", arrays)
    _fit_refused(work, path, "--pca-dim", "150", "40 training rows", "at most 40",
                 extra=("--method", "erm", "--preprocess", "pca", "--pca-dim", "150"))
    # The control: a dimension pca can keep is fitted and recorded as given.
    res = run_cli("fit", path, "--out", work / "ok", *FAST, "--method", "erm", "--preprocess", "pca",
                  "--pca-dim", "40")
    assert res.code == 0, res.stderr
    assert json.loads((work / "ok" / "summary.json").read_text())["provenance"]["settings"]["pca_dim"] == 40
