"""Class-balanced last-layer retraining, CB-LLR (LaBonte, Muthukumar & Kumar, NeurIPS 2023;
``exps/disagreement.py`` of tmlabonte/last-layer-retraining), with no group label read:

* validation is shuffled (the configuration's seed) and cut in halves: the first half
  retrains the head, the second selects;
* the head is reset and fitted class-balanced (every class the same total weight) on the
  retraining half, to its optimum by the full-batch solver at the configuration's weight
  decay, on the fit's preprocessed features;
* its validation metrics, and whether it collapsed, are those of the selection half alone,
  so that any selection rule reads rows the head was not fitted on (DFR's validation
  metrics, by contrast, are in-sample).

The 2025 analysis (Hill, LaBonte et al., arXiv 2512.01766) finds most of last-layer
retraining's gain comes from the held-out set being better group-balanced than train.
Default grid: weight decay ∈ {1e-4, 1e-3, 1e-2, 1e-1}.
"""

from __future__ import annotations

import numpy as np

from base.lazy import lazy_import
from features.schema import SPLITS
from probe.methods.base import register
from probe.methods.retrain import Retrained, class_balanced, permutation_split, solve
from probe.records.metrics import split_metrics, train_group_totals

torch = lazy_import("torch")


def halves(n_val: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(retraining half, selection half) of the validation rows' positions."""
    return permutation_split(np.arange(n_val), 0.5, seed)


@register
class CBLLR(Retrained):
    name = "cb-llr"
    display = "CB-LLR"
    summary = ("cb-llr: class-balanced last-layer retraining on half of validation, the other half for "
               "selection; no group labels")
    common_grids = {"weight_decay": (1e-4, 1e-3, 1e-2, 1e-1)}

    @classmethod
    def fit_cohort(cls, fs, splits, configs, seed, settings):
        va = splits["val"]
        fit_half, _ = halves(len(va.rows), seed)
        X, y = va.X().to(torch.float64)[fit_half], va.y[fit_half]
        w = torch.as_tensor(class_balanced(y.cpu().numpy(), fs.num_classes), device=X.device)
        sol = solve(X, y, w, [c["weight_decay"] for c in configs], fs.num_classes, settings)
        return sol.theta, [{"retrain_rows": len(fit_half)} for _ in configs], list(sol.status)

    @classmethod
    def selection_rows(cls, splits, seed):
        return halves(len(splits["val"].rows), seed)[1]

    @classmethod
    def rescore(cls, fs, splits, configs, rows, seed):
        from probe.moments.basics import logits

        va = splits["val"]
        select_half = cls.selection_rows(splits, seed)
        mask = fs.split == SPLITS["val"]
        y, group = fs.y[mask][select_half], fs.group[mask][select_half]
        train_total = train_group_totals(fs, "val")
        Xs = va.X(torch.as_tensor(select_half, device=va.rows.device))
        for row in rows:
            pred = logits(row.theta.to(device=Xs.device, dtype=Xs.dtype), Xs, va.bias).argmax(-1)
            row.metrics["val"] = split_metrics(pred, y, group, fs.group_names, train_total, fs.class_names)
