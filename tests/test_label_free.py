"""Issue 28: without group labels. A declared information regime enforced by construction,
label-free heads (AFR, JTT, CB-LLR) that match plain reimplementations of their papers'
procedures, and inferred domains for the penalised methods."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from base.errors import UserError
from features.store import FeatureSet
from probe.api import fit_grid
from probe.methods import afr as afr_module
from probe.methods.cb_llr import halves
from probe.preprocessing import Preprocessor
from tests.conftest import assert_user_error, run_cli
from tests.h5craft import toy_arrays, write_feature_file
from tests.test_trainer import waterbirds_like

LABEL_FREE = {"afr": {"gamma": [4.0, 12.0], "lam": [0.0, 0.2], "epochs": [100]},
              "jtt": {"upweight": [20.0, 50.0]}, "cb-llr": {"weight_decay": [1e-3, 1e-1]}}
INFERRED = ("infer:errors", "infer:eiil", "infer:cluster")


@pytest.fixture(scope="module")
def planted() -> FeatureSet:
    """Waterbirds-like: the spurious direction agrees with the class on 95% of train."""
    return waterbirds_like(n=(1000, 400, 400), seed=1)


def _permuted(fs: FeatureSet, splits: tuple[int, ...]) -> FeatureSet:
    """``fs`` with the group and attribute labels of the rows of ``splits`` shuffled."""
    rng = np.random.default_rng(7)
    group, a = fs.group.copy(), fs.a.copy()
    for s in splits:
        rows = np.flatnonzero(fs.split == s)
        perm = rng.permutation(rows)
        group[rows], a[rows] = group[perm], a[perm]
    return dataclasses.replace(fs, group=group, a=a)


def _selected(res: dict, method: str) -> tuple:
    entry = res["summary"].methods[method]
    rows = {r.run_id: r for r in res["rows"][method]}
    heads = [rows[i].theta for i in entry.selected.run_ids]
    return entry.selected.hparams, heads, entry.metrics["test"]


FAST = {"steps": 60, "eval_every": 20, "batch_size": 256, "eiil_steps": 300}


@pytest.mark.parametrize("case", [*[(m, None) for m in LABEL_FREE], *[("cma", s) for s in INFERRED],
                                  ("reweight", "infer:errors")])
def test_without_group_labels_permuting_train_and_val_labels_changes_nothing(tmp_path, planted, case) -> None:
    method, source = case
    grid = LABEL_FREE.get(method, {"alpha": [10.0, 1e3], "beta": [1.0], "anneal": [0]})
    kw = {"group_labels": "none", **({"domain": source} if source else {}), **FAST}
    runs = [fit_grid(fs, [method], grid, tmp_path / name, **kw)
            for name, fs in (("orig", planted), ("perm", _permuted(planted, (0, 1))))]
    (hp0, heads0, test0), (hp1, heads1, test1) = (_selected(r, method) for r in runs)
    assert hp0 == hp1 and test0 == test1
    assert all(torch.equal(a, b) for a, b in zip(heads0, heads1, strict=True))
    # and the fit saw none of them: the validation split has no group figures
    assert runs[0]["summary"].methods[method].metrics["val"]["wga"] is None


def test_with_validation_groups_only_permuting_train_labels_changes_nothing(tmp_path, planted) -> None:
    kw = {"group_labels": "val", "select": "val_wga", **FAST}
    runs = [fit_grid(fs, ["dfr", "jtt"], {"upweight": [20.0]}, tmp_path / name, **kw)
            for name, fs in (("orig", planted), ("perm", _permuted(planted, (0,))))]
    for m in ("dfr", "jtt"):
        (hp0, heads0, test0), (hp1, heads1, test1) = (_selected(r, m) for r in runs)
        assert hp0 == hp1 and test0 == test1 and all(torch.equal(a, b) for a, b in zip(heads0, heads1, strict=True))


def test_what_needs_more_labels_than_the_regime_allows_is_refused_naming_both(planted) -> None:
    cases = [(dict(group_labels="none"), ["dfr"], "`method` dfr reads the group and spurious-attribute labels of "
                                                  "the validation rows, which `group_labels` none"),
             (dict(group_labels="none", select="val_wga"), ["erm"], "`select` val_wga"),
             (dict(group_labels="val", domain="group"), ["cma"], "`domain` group"),
             (dict(group_labels="none"), ["erm"], "`preprocess` isr-mean")]
    for settings, methods, message in cases:
        grid = {"preprocess": ["isr-mean"]} if "isr-mean" in message else {}
        with pytest.raises(UserError, match=re.escape(message)):
            fit_grid(planted, methods, grid, None, **settings)


def test_the_cli_refuses_a_method_the_regime_forbids_in_one_line(tmp_path) -> None:
    path = write_feature_file(tmp_path / "toy.h5", toy_arrays(8, 4))
    res = run_cli("fit", path, "--method", "erm,dfr", "--group-labels", "none", "--out", tmp_path / "run")
    assert_user_error(res, "--method dfr reads", "--group-labels none")
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ the heads against their papers


def _preprocessed(fs: FeatureSet) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The training and validation rows after the default pca, as probe fits it, in float64."""
    tr, va = fs.split == 0, fs.split == 1
    X = torch.as_tensor(fs.features, dtype=torch.float64)
    pre = Preprocessor("pca").fit(X[tr], torch.as_tensor(fs.y[tr]), torch.as_tensor(fs.a[tr]))
    return pre.transform(X[tr]).numpy(), fs.y[tr], pre.transform(X[va]).numpy(), fs.y[va]


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _sklearn_head(X: np.ndarray, y: np.ndarray, w: np.ndarray, lam: float) -> np.ndarray:
    """The two-class head [−v/2, v/2] of sklearn's L2 logistic regression with sample weights
    w (normalised): Σ w CE + λ/2‖W‖² is sklearn's objective at C = 2/λ (two classes)."""
    lr = LogisticRegression(C=2.0 / lam, tol=1e-12, max_iter=100_000).fit(X, y, sample_weight=w / w.sum())
    v = np.concatenate([lr.coef_[0], lr.intercept_])
    return np.stack([-v / 2, v / 2])


def _gd(X: np.ndarray, y: np.ndarray, w: np.ndarray, theta0: np.ndarray, steps: int, lr: float, pull: float,
        clip: float | None) -> np.ndarray:
    """Full-batch gradient descent on Σ w CE + pull‖θ − θ0‖², written out plainly."""
    Xt = np.hstack([X, np.ones((len(X), 1))])
    onehot = np.eye(theta0.shape[0])[y]
    theta = theta0.copy()
    for _ in range(steps):
        grad = ((w[:, None] * (_softmax(Xt @ theta.T) - onehot)).T @ Xt) + 2 * pull * (theta - theta0)
        norm = np.linalg.norm(grad)
        if clip is not None and norm > clip:
            grad *= clip / norm
        theta = theta - lr * grad
    return theta


def test_afr_matches_its_procedure_written_out(planted) -> None:
    X, y, _, _ = _preprocessed(planted)
    seed, gamma, lam, wd, steps = 3, 8.0, 0.2, 1e-2, 40
    res = fit_grid(planted, ["afr"], {"gamma": [gamma], "lam": [lam], "epochs": [steps], "weight_decay": [wd],
                                      "seed": [seed]}, None, dtype="float64", tol=1e-10)
    order = np.random.default_rng(seed).permutation(len(y))
    first, held = np.sort(order[:800]), np.sort(order[800:])
    theta0 = _sklearn_head(X[first], y[first], np.ones(len(first)), wd)
    p_true = _softmax(np.hstack([X[held], np.ones((len(held), 1))]) @ theta0.T)[np.arange(len(held)), y[held]]
    w = np.exp(-gamma * p_true) * (len(held) / np.bincount(y[held])[y[held]])
    w /= w.sum()
    np.testing.assert_allclose(afr_module.afr_weights(p_true, y[held], gamma, 2), w, rtol=1e-12)
    want = _gd(X[held], y[held], w, theta0, steps, 1e-2, lam, 1.0)
    np.testing.assert_allclose(res["rows"]["afr"][0].theta.numpy(), want, atol=1e-6)


def test_jtt_matches_its_procedure_written_out(planted) -> None:
    X, y, _, _ = _preprocessed(planted)
    T, up, wd = 30, 50.0, 1e-2
    res = fit_grid(planted, ["jtt"], {"first_steps": [T], "upweight": [up], "weight_decay": [wd]}, None,
                   dtype="float64", tol=1e-10)
    row = res["rows"]["jtt"][0]
    Xt = np.hstack([X, np.ones((len(X), 1))])
    L = 0.5 * np.linalg.eigvalsh(Xt.T @ Xt / len(y))[-1]
    first = _gd(X, y, np.full(len(y), 1 / len(y)), np.zeros((2, Xt.shape[1])), T, 1 / L, 0.0, None)
    errors = (Xt @ first.T).argmax(1) != y
    assert row.tuned["error_set"] == int(errors.sum()) > 0
    want = _sklearn_head(X, y, np.where(errors, up, 1.0), wd)
    np.testing.assert_allclose(row.theta.numpy(), want, atol=1e-6)


def test_cb_llr_matches_its_procedure_written_out(planted) -> None:
    _, _, Xv, yv = _preprocessed(planted)
    seed, wd = 5, 1e-2
    res = fit_grid(planted, ["cb-llr"], {"weight_decay": [wd], "seed": [seed]}, None, dtype="float64", tol=1e-10)
    row = res["rows"]["cb-llr"][0]
    order = np.random.default_rng(seed).permutation(len(yv))
    fit_half, select_half = np.sort(order[:200]), np.sort(order[200:])
    assert [h.tolist() for h in halves(len(yv), seed)] == [fit_half.tolist(), select_half.tolist()]
    w = 1.0 / (2 * np.bincount(yv[fit_half])[yv[fit_half]])
    np.testing.assert_allclose(row.theta.numpy(), _sklearn_head(Xv[fit_half], yv[fit_half], w, wd), atol=1e-6)
    assert sum(g["n"] for g in row.metrics["val"]["per_group"].values()) == len(select_half)


def test_label_free_heads_and_inferred_domains_beat_erm_without_group_labels(tmp_path, planted) -> None:
    res = fit_grid(planted, ["erm", "afr", "jtt", "cb-llr"], {}, tmp_path / "lf", group_labels="none")
    wga = {m: e.metrics["test"]["wga"] for m, e in res["summary"].methods.items()}
    for m in ("afr", "jtt", "cb-llr"):
        assert wga[m] > wga["erm"] + 0.2, wga
    cma = fit_grid(planted, ["cma"], {"alpha": [1e2, 1e3], "beta": [10.0], "anneal": [0]}, tmp_path / "cma",
                   group_labels="none", domain="infer:errors", steps=300, eval_every=50)
    assert cma["summary"].methods["cma"].metrics["test"]["wga"] > wga["erm"] + 0.2
    # the inferred domains are saved per training row, and the report can say how they meet the true groups
    summary = cma["summary"]
    assert summary.group_labels == "none" and summary.domains["source"] == "infer:errors"
    assert summary.domains["ari_train"] > 0.5 and summary.domains["file"] == "domains.csv"
    lines = (tmp_path / "cma" / "domains.csv").read_text().splitlines()
    assert lines[0] == "id,domain" and len(lines) == 1 + int((planted.split == 0).sum())
    assert {line.split(",")[1] for line in lines[1:]} == set(summary.domains["names"])


def test_the_agreement_with_the_true_groups_is_scikit_learns_adjusted_rand_index() -> None:
    from sklearn.metrics import adjusted_rand_score

    from probe.pipeline import adjusted_rand_index

    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 60))
        a, b = rng.integers(0, int(rng.integers(1, 5)), n), rng.integers(0, int(rng.integers(1, 6)), n) * 10**12
        assert adjusted_rand_index(a, b) == pytest.approx(adjusted_rand_score(a, b), abs=1e-12)


# ------------------------------------------------------------------ the regime where a fit starts


def test_fit_method_refuses_what_the_settings_regime_forbids(planted) -> None:
    from probe.api import make_settings
    from probe.domains import resolve
    from probe.fitting.dispatch import fit_method
    from probe.methods import get_method

    def fit(fs, method, **settings):
        st = make_settings("cpu", "float64", **settings)
        return fit_method(fs, method, get_method(method).configs({}, st.steps)[:1], st)

    with pytest.raises(UserError, match=r"`method` dfr reads .*`group_labels` none"):
        fit(planted, "dfr", group_labels="none")
    with pytest.raises(UserError, match=r"`select` val_wga reads .*`group_labels` none"):
        fit(planted, "erm", group_labels="none", select="val_wga")
    everything = resolve(planted, "group", make_settings("cpu", group_labels="all"))
    with pytest.raises(UserError, match=r"`domain` group reads .*`group_labels` val"):
        fit(everything, "erm", group_labels="val", domain="group")
    # a file resolved under `all` and fitted under none: the fit reads no group label
    inferred = resolve(planted, "infer:errors", make_settings("cpu", group_labels="all"))
    assert fit(inferred, "erm", group_labels="all", domain="infer:errors")[0].metrics["val"]["wga"] is not None
    row = fit(inferred, "erm", group_labels="none", domain="infer:errors")[0]
    assert row.metrics["val"]["wga"] is None and row.metrics["train"]["wga"] is None
    # ... and one resolved under none stays so under a looser regime
    hidden = resolve(planted, "infer:errors", make_settings("cpu", group_labels="none"))
    with pytest.raises(UserError, match=r"`method` dfr reads .*`group_labels` none"):
        fit(hidden, "dfr", group_labels="all", domain="infer:errors")


def test_linear_head_refuses_a_selection_rule_its_regime_forbids() -> None:
    from probe.api import LinearHead

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 3)), np.arange(40) % 2
    head = LinearHead("erm", steps=5, group_labels="none", select="val_wga")
    with pytest.raises(UserError, match=r"`select` val_wga reads .*`group_labels` none"):
        head.fit(X, y, y, X_val=X, y_val=y, groups_val=y)
