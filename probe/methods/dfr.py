"""Deep Feature Reweighting, DFR(Val) (Kirichenko, Izmailov & Wilson, ICLR 2023):
last-layer retraining on group-balanced validation data.

Follows the authors' `dfr_evaluate_spurious.py` (functions `dfr_on_validation_tune`
and `dfr_on_validation_eval`, with their defaults: balanced validation, no
training rows added):

* tuning: validation is shuffled and split in halves; one half, subsampled so
  every group has as many rows as its smallest group, is standardized (scaler
  fitted on that subset) and fits one L1 logistic regression (liblinear) per C in
  {1, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01}; C is chosen by worst-group accuracy on
  the other half (ties: the first, i.e. the largest C);
* final head: the scaler is fitted on the *training* split; 20 L1 logistic
  regressions at the chosen C, each on a fresh group-balanced subsample of the
  whole validation set, and their coefficients and intercepts are averaged.

With more than two classes each fit is one-vs-rest L1 logistic regression, as
liblinear did by itself in the scikit-learn the authors used (1.9's does not).

DFR trains on validation data, so its validation metrics are in-sample; only
its test numbers compare with the other methods. It is scikit-learn based, not
gradient based: a registered method with its own ``fit``, whose rows are the
same :class:`probe.records.results.Result` records, scored by the same code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from features.schema import SPLITS
from probe.methods.base import Method, register
from probe.records.metrics import metrics_by_head
from probe.records.results import Result, run_id

if TYPE_CHECKING:
    from features.store import FeatureSet
    from probe.records.fitset import FitSet

C_OPTIONS = (1.0, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01)
N_RETRAINS = 20


def _balanced(idx: np.ndarray, group: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Subsample every group present in ``idx`` to the smallest group's size."""
    groups = [idx[group[idx] == g] for g in np.unique(group[idx])]
    n = min(len(g) for g in groups)
    return np.concatenate([rng.choice(g, n, replace=False) for g in groups])


def _fit(X: np.ndarray, y: np.ndarray, c: float, seed: int) -> Any:
    import sklearn
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    # scikit-learn 1.8 deprecated `penalty`; an L1 fit is spelled l1_ratio=1 from then on.
    new = tuple(int(v) for v in sklearn.__version__.split(".")[:2]) >= (1, 8)
    # scikit-learn seeds numpy's legacy RandomState, which takes 32 bits (seeds below that unchanged)
    model = LogisticRegression(C=c, solver="liblinear", random_state=seed % 2**32,
                               **({"l1_ratio": 1.0} if new else {"penalty": "l1"}))
    return (model if len(np.unique(y)) <= 2 else OneVsRestClassifier(model)).fit(X, y)


def _coefficients(model: Any, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(C, d) weights and (C,) biases of a softmax head that predicts as ``model`` does."""
    if hasattr(model, "estimators_"):  # one-vs-rest: class c scores with its own binary fit
        coef = np.vstack([e.coef_ for e in model.estimators_])
        return coef, np.concatenate([e.intercept_ for e in model.estimators_])
    coef, icpt = model.coef_, model.intercept_
    if num_classes == 2:  # binary LR: the logit of class 1; as a 2-row softmax head
        coef, icpt = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], icpt])
    return coef, icpt


def _scaler(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # StandardScaler: population std, constant features left unscaled.
    std = X.std(0)
    return X.mean(0), np.where(std > 0, std, 1.0)


def _wga(pred: np.ndarray, y: np.ndarray, group: np.ndarray) -> float:
    return min(float((pred[group == g] == y[group == g]).mean()) for g in np.unique(group))


def tune_c(fs: FeatureSet, rng: np.random.Generator, seed: int,
           c_options: tuple[float, ...] = C_OPTIONS) -> tuple[float, dict[float, float]]:
    """The L1 strength C chosen on one half of validation (module docstring)."""
    val = np.flatnonzero(fs.split == SPLITS["val"])
    perm = rng.permutation(val)
    held, fit_half = perm[: len(perm) // 2], perm[len(perm) // 2:]
    sub = _balanced(fit_half, fs.group, rng)
    mean, scale = _scaler(fs.features[sub])
    Xs, Xh = (fs.features[sub] - mean) / scale, (fs.features[held] - mean) / scale
    scores = {}
    for c in c_options:
        model = _fit(Xs, fs.y[sub], c, seed)
        scores[c] = _wga(model.predict(Xh), fs.y[held], fs.group[held])
    best = max(c_options, key=lambda c: (scores[c], -c_options.index(c)))
    return best, scores


def fit_dfr(fs: FeatureSet, seed: int = 0, n_retrains: int = N_RETRAINS,
            c_options: tuple[float, ...] = C_OPTIONS) -> Result:
    """One DFR head for one seed, as a result record."""
    import torch

    rng = np.random.default_rng(seed)
    best_c, scores = tune_c(fs, rng, seed, c_options)
    val = np.flatnonzero(fs.split == SPLITS["val"])
    train = fs.split == SPLITS["train"]
    mean, scale = _scaler(fs.features[train])
    coefs, intercepts = [], []
    for _ in range(n_retrains):
        sub = _balanced(val, fs.group, rng)
        coef, icpt = _coefficients(_fit((fs.features[sub] - mean) / scale, fs.y[sub], best_c, seed),
                                   fs.num_classes)
        coefs.append(coef)
        intercepts.append(icpt)
    theta = np.concatenate([np.mean(coefs, 0), np.mean(intercepts, 0)[:, None]], axis=1)
    Z = (fs.features - mean) / scale
    pred = torch.as_tensor((Z @ theta[:, :-1].T + theta[:, -1]).argmax(1))
    metrics = metrics_by_head(fs, {name: pred[torch.as_tensor(fs.split == code)].unsqueeze(0)
                                   for name, code in SPLITS.items()})[0]
    return Result(
        method="dfr",
        # C is tuned inside each seed, so it is not a hyperparameter of the configuration:
        # seeds with different C still form one configuration for selection and reports.
        hparams={"seed": seed, "n_retrains": n_retrains, "c_options": list(c_options),
                 "preprocess": "standardize"},  # DFR's own scaler, fitted on train: its pre state
        tuned={"C": best_c, "tuning_wga": {f"{c:g}": s for c, s in scores.items()}},
        metrics=metrics,
        theta=torch.as_tensor(theta, dtype=torch.float32),
        pre={"mean": torch.as_tensor(mean, dtype=torch.float32), "scale": torch.as_tensor(scale, dtype=torch.float32)},
    )


def dfr_bounds(fs: FitSet, row: Result, rows: int) -> dict[str, Any]:
    """The bound terms of a DFR head on the training rows (probe.diagnostics.bounds), in the
    standardized space its head reads, over the fit's domains; ``step`` 0: it is fitted in
    closed form, no curve."""
    import torch

    from probe.diagnostics.bounds import measure, record, sample_rows

    dom = fs.train_domains()
    idx = sample_rows(dom, rows)
    train = np.flatnonzero(fs.split == SPLITS["train"])[idx]
    mean, scale = (row.pre[k].to(torch.float64).numpy() for k in ("mean", "scale"))
    X = torch.as_tensor((fs.features[train].astype(np.float64) - mean) / scale)
    fig = measure(row.theta.unsqueeze(0), X, torch.as_tensor(fs.y[train]), torch.as_tensor(dom[idx]),
                  fs.domain_names)[0]
    return record(fig, domain=fs.domain_source, rows=len(idx), train_rows=len(dom), step=0)


@register
class DFR(Method):
    name = "dfr"
    display = "DFR"
    reads = frozenset({"val_groups"})  # group-balanced validation subsets, C tuned on validation WGA
    summary = ("dfr: Deep Feature Reweighting, L1 logistic regression on group-balanced validation subsets, C "
               "tuned on half of validation; one head per seed")

    @classmethod
    def fit(cls, fs, configs, settings, results):
        for i, cfg in enumerate(configs):
            row = fit_dfr(fs, seed=int(cfg["seed"]))
            row.run_id = run_id(cls.name, i)
            row.bounds = dfr_bounds(fs, row, settings.bounds_rows) if settings.bounds else None
            results.append(row)
