"""Deep Feature Reweighting (Kirichenko, Izmailov & Wilson, 2023), last-layer retraining.

As in the authors' `dfr_evaluate_spurious.py`: features are standardized with a
scaler fitted on the validation set; the L1 strength C is chosen from
{1, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01} by worst-group accuracy on one random half
of validation after training on group-balanced subsets of the other half; the
final head is the average of the coefficients of `n_retrains` L1 logistic
regressions (liblinear) each fitted on a group-balanced subset of the whole
validation set. DFR trains on validation data, so its validation metrics are
in-sample; only test numbers are comparable with the other methods.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import sklearn
import torch
from sklearn.linear_model import LogisticRegression

from features.store import SPLITS, FeatureSet
from probe.metrics import group_sizes, split_metrics

C_OPTIONS = (1.0, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01)
N_RETRAINS = 20


def _balanced(idx: np.ndarray, group: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Subsample every group present in ``idx`` to the smallest group's size."""
    groups = [idx[group[idx] == g] for g in np.unique(group[idx])]
    n = min(len(g) for g in groups)
    return np.concatenate([rng.choice(g, n, replace=False) for g in groups])


# scikit-learn 1.8 deprecated `penalty`; an L1 fit is spelled l1_ratio=1 from then on.
_L1 = {"l1_ratio": 1.0} if tuple(int(v) for v in sklearn.__version__.split(".")[:2]) >= (1, 8) else {"penalty": "l1"}


def _fit(X: np.ndarray, y: np.ndarray, c: float, seed: int) -> LogisticRegression:
    return LogisticRegression(C=c, solver="liblinear", random_state=seed, **_L1).fit(X, y)


def _wga(pred: np.ndarray, y: np.ndarray, group: np.ndarray) -> float:
    return min(float((pred[group == g] == y[group == g]).mean()) for g in np.unique(group))


def fit_dfr(fs: FeatureSet, seed: int = 0, n_retrains: int = N_RETRAINS,
            c_options: tuple[float, ...] = C_OPTIONS) -> dict[str, Any]:
    """One DFR head for one seed, as a result row in the trainer's format."""
    rng = np.random.default_rng(seed)
    val = np.flatnonzero(fs.split == SPLITS["val"])
    mean = fs.features[val].mean(0)
    scale = fs.features[val].std(0).clip(1e-6)
    Z = (fs.features - mean) / scale
    perm = rng.permutation(val)
    tune, held = perm[: len(perm) // 2], perm[len(perm) // 2:]
    scores = {}
    for c in c_options:
        sub = _balanced(tune, fs.group, rng)
        model = _fit(Z[sub], fs.y[sub], c, seed)
        scores[c] = _wga(model.predict(Z[held]), fs.y[held], fs.group[held])
    best_c = max(c_options, key=lambda c: (scores[c], -c_options.index(c)))
    coefs, intercepts = [], []
    for _ in range(n_retrains):
        sub = _balanced(val, fs.group, rng)
        model = _fit(Z[sub], fs.y[sub], best_c, seed)
        coef, icpt = model.coef_, model.intercept_
        if fs.num_classes == 2:  # binary LR: logit of class 1; as a 2-row softmax head
            coef, icpt = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], icpt])
        coefs.append(coef)
        intercepts.append(icpt)
    theta = np.concatenate([np.mean(coefs, 0), np.mean(intercepts, 0)[:, None]], axis=1)
    pred = (np.concatenate([Z, np.ones((len(Z), 1))], 1) @ theta.T).argmax(1)
    train_total = group_sizes(fs.group[fs.split == SPLITS["train"]], fs.num_groups)
    metrics = {name: split_metrics(pred[fs.split == code], fs.y[fs.split == code], fs.group[fs.split == code],
                                   fs.group_names, train_total) for name, code in SPLITS.items()}
    return {
        "method": "dfr",
        "hparams": {"C": best_c, "seed": seed, "n_retrains": n_retrains, "tuning_wga": scores,
                    "preprocess": "standardize (fitted on val)"},
        "status": "ok", "steps_run": 0, "best_step": 0, "metrics": metrics,
        "history": {"step": [], "loss": [], "val_wga": [], "val_acc": [], "penalty": {}},
        "_theta": torch.as_tensor(theta, dtype=torch.float32),
        "_pre": {"mean": torch.as_tensor(mean), "scale": torch.as_tensor(scale)},
    }
