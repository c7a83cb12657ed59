"""AFR, Automatic Feature Reweighting (Qiu, Potapczynski, Izmailov & Wilson, ICML 2023), on the
head, with no group label read (the authors' ``train_embeddings.py`` and
``losses.get_exp_weights``):

* the training rows are shuffled (the configuration's seed) and cut 80/20; an ERM head
  θ⁰ is fitted on the first part (the full-batch solver, to its optimum, at the
  configuration's weight decay: the base model's last layer);
* each held-out row gets w_i ∝ exp(−γ · p_θ⁰(y_i | x_i)), multiplied by N/N_c of its class
  (class rebalancing, on by default in their code), normalised to sum to 1;
* the new head starts at θ⁰ and minimises Σ_i w_i CE_i + λ ‖θ − θ⁰‖² (weights and bias;
  heads without a bias column when the fit's ``bias`` is off) by their optimiser: full-batch gradient descent, no momentum, the gradient's norm
  clipped to 1, ``lr`` (their 1e-2 on Waterbirds) for ``epochs`` steps (their 500).

Default grid: their Waterbirds grid, γ ∈ linspace(4, 20, 33) × λ ∈ {0, 0.1, 0.2, 0.3}.
Every (γ, λ) of a seed is one batched descent. The kept head is the last step's; the run
selects among configurations by its headline rule (val_worst_class reads no group). A head
carries its ERM head's solver verdict, or ``diverged`` when the descent left the finite numbers.
"""

from __future__ import annotations

import numpy as np

from base.lazy import lazy_import
from probe.methods.base import register
from probe.methods.retrain import Retrained, permutation_split, solve
from probe.records.grid import Param

torch = lazy_import("torch")

#: the share of the training rows the ERM head is fitted on (the rest are reweighted)
ERM_SHARE = 0.8
#: their gradient-norm clip
CLIP = 1.0


def afr_weights(p_true: np.ndarray, y: np.ndarray, gamma: float, num_classes: int) -> np.ndarray:
    """Held-out rows' weights: exp(−γ p), times N/N_c per class, normalised (module docstring)."""
    w = np.exp(-gamma * p_true)
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    w = w * (len(y) / counts[y])
    return w / w.sum()


@register
class AFR(Retrained):
    name = "afr"
    display = "AFR"
    summary = ("afr: Automatic Feature Reweighting, an ERM head on 80% of train, then the held-out 20% "
               "reweighted by exp(-gamma p(y|x)) and retrained with an l2 pull (lam) toward it; no group labels")
    params = (
        Param("gamma", "afr: the weights' temperature γ in exp(−γ p(y|x)).", default=10.0,
              grid=tuple(float(f"{v:.12g}") for v in np.linspace(4, 20, 33)), search=("uniform", 4.0, 20.0),
              symbol="γ"),
        Param("lam", "afr: the l2 pull λ toward the ERM head (weights and bias).", default=0.1,
              grid=(0.0, 0.1, 0.2, 0.3), search=("uniform", 0.0, 0.3), symbol="λ"),
        Param("epochs", "afr: full-batch gradient steps of the retraining (their 500).", kind=int, default=500,
              minimum=1),
    )
    common = ("lr", "weight_decay", "seed", "preprocess")
    heatmap = ("gamma", "lam")

    @classmethod
    def fit_cohort(cls, fs, splits, configs, seed, settings):
        from probe.moments.basics import logits
        from probe.train.gd import descend

        tr = splits["train"]
        X, y = tr.X().to(torch.float64), tr.y
        f64 = dict(dtype=torch.float64, device=X.device)
        parts = permutation_split(np.arange(len(y)), ERM_SHARE, seed)
        first, held = (torch.as_tensor(p, device=X.device) for p in parts)
        decays = sorted({c["weight_decay"] for c in configs})  # the ERM head depends on it alone
        sol = solve(X[first], y[first], torch.ones(len(first), **f64), decays, fs.num_classes, settings)
        erm = dict(zip(decays, sol.theta, strict=True))
        verdict = dict(zip(decays, sol.status, strict=True))
        Xh, yh = X[held], y[held]
        y_np = yh.cpu().numpy()
        p_true = {wd: torch.softmax(logits(head, Xh, settings.bias), -1).gather(1, yh.view(-1, 1)).squeeze(1)
                  .cpu().numpy() for wd, head in erm.items()}
        w = torch.as_tensor(np.stack([afr_weights(p_true[c["weight_decay"]], y_np, c["gamma"], fs.num_classes)
                                      for c in configs]), **f64)
        theta0 = torch.stack([erm[c["weight_decay"]] for c in configs])
        out = torch.empty_like(theta0)
        for steps in sorted({int(c["epochs"]) for c in configs}):  # one descent per step count
            g = [i for i, c in enumerate(configs) if int(c["epochs"]) == steps]
            out[g] = descend(Xh, yh, w[g], steps, num_classes=fs.num_classes, theta0=theta0[g],
                             pull=torch.tensor([float(configs[i]["lam"]) for i in g], **f64),
                             lr=torch.tensor([float(configs[i]["lr"]) for i in g], **f64), clip=CLIP,
                             bias=settings.bias)
        finite = torch.isfinite(out).flatten(1).all(1).tolist()
        status = [verdict[c["weight_decay"]] if ok else "diverged" for c, ok in zip(configs, finite, strict=True)]
        tuned = [{"erm_rows": len(first), "reweighted_rows": len(held)} for _ in configs]
        return out, tuned, status
