"""The transfer bound's terms on every fitted head, for results.jsonl and the report.

The CMA paper bounds the transfer gap by ``max_{e,f} ‖∇ⁿL_e − ∇ⁿL_f‖_F`` over pairs of
training domains (Theorems 1 and 3); here each head gets, exactly
(``probe.moments.domain_discrepancies``, float64): the mean cross-entropy of every
training domain and that maximum for n = 1, 2, 3 (``grad``, ``hess``, ``third``),
with the pair of domains attaining it. Derivatives are w.r.t. the head's own
parameters (weights, and bias when it has one) on its own preprocessed features, unscaled by
``normalize``.

Which rows (the cost is ``O(m² (d + G C))`` for m rows):

* at the kept checkpoint, the training rows, at most ``bounds_rows`` of them (0: all);
* along the training curve, at every evaluation, at most ``bounds_curve_rows`` (0: no
  curve), their Gram matrix computed once per chunk of heads.

When the training split has more rows than the cap, every domain keeps
``min(n_e, quota)`` rows, the quota filling the cap (small domains keep every row),
drawn once with the fixed seed ``SAMPLE_SEED``: every method, seed and configuration
of a fit is measured on the same rows. On a sample the figures are those of the
sample's per-domain means (slightly larger than the population's, by sampling noise).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from base.lazy import lazy_import
from probe import moments

torch = lazy_import("torch")

#: the bound's derivative terms, n = 1, 2, 3
TERMS = ("grad", "hess", "third")
#: the seed of the row sample (not the fit's seed: every fit measures the same rows)
SAMPLE_SEED = 0


def sample_rows(domains: np.ndarray, cap: int, seed: int = SAMPLE_SEED) -> np.ndarray:
    """Sorted indices of at most ``cap`` rows (0: all), stratified by domain (module docstring)."""
    domains = np.asarray(domains)
    n = len(domains)
    if cap <= 0 or n <= cap:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    pools = [np.flatnonzero(domains == k) for k in np.unique(domains)]
    keep, left = [0] * len(pools), cap
    # water-filling: the smallest domains take all their rows, the rest share what is left
    for i, k in enumerate(np.argsort([len(p) for p in pools], kind="stable")):
        keep[k] = min(len(pools[k]), left // (len(pools) - i))
        left -= keep[k]
    return np.sort(np.concatenate([rng.choice(p, m, replace=False) for p, m in zip(pools, keep, strict=True)]))


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def measure(theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor, domains: torch.Tensor,
            names: list[str], bias: bool = True) -> list[dict[str, Any] | None]:
    """Per head of ``theta`` (G, C, d+1), or (G, C, d) without ``bias``: its losses per
    domain, the three maxima and the pairs attaining them, on the rows ``X`` (computed in
    float64, the Gram blocks in X's dtype); None for a head that is not finite."""
    # check=False: the rows come from a validated fit, and the checks (finiteness of X
    # among them) cost as much as the first-order terms
    res = moments.domain_discrepancies(torch.nan_to_num(theta.to(torch.float64)), X, y, domains, bias=bias,
                                       check=False)
    ids = [names[i] if i < len(names) else str(i) for i in res.domain_ids.tolist()]
    finite = torch.isfinite(theta).flatten(1).all(1).tolist()
    K = len(ids)
    out: list[dict[str, Any] | None] = []
    for g, ok in enumerate(finite):
        if not ok:
            out.append(None)
            continue
        row: dict[str, Any] = {"losses": {n: _finite(float(v)) for n, v in zip(ids, res.losses[g].tolist(),
                                                                                  strict=True)}}
        pairs = {}
        for t, dist in zip(TERMS, res.distances[g], strict=True):
            flat = int(dist.flatten().argmax()) if K else 0
            row[t] = _finite(float(dist.flatten()[flat])) if K else 0.0
            pairs[t] = [ids[flat // K], ids[flat % K]] if K > 1 else []
        row["pairs"] = pairs
        out.append(row)
    return out


def record(figures: dict[str, Any] | None, *, domain: str, rows: int, train_rows: int, step: int,
           curve: dict[str, Any] | None = None) -> dict[str, Any]:
    """A head's ``bounds`` entry of results.jsonl (docs/results-format.md)."""
    empty = {"losses": None, **{t: None for t in TERMS}, "pairs": None}
    out = {"domain": domain, "rows": rows, "train_rows": train_rows, "step": step, **(figures or empty)}
    if curve is not None:
        out["curve"] = curve
    return out


class Curve:
    """The three maxima at every evaluation, on a fixed sample of training rows, and each
    head's mean cross-entropy on those rows (so that heads can be compared at the same fit)."""

    def __init__(self, X: torch.Tensor, y: torch.Tensor, domains: torch.Tensor, bias: bool = True) -> None:
        self.X, self.y, self.domains, self.bias = X, y, domains, bias
        self.gram = moments.feature_gram(X, bias)
        self.steps: list[int] = []
        self.values: list[list[list[float | None]]] = []  # per evaluation, per head, per term
        self.ce: list[list[float | None]] = []  # per evaluation, per head

    @property
    def rows(self) -> int:
        return self.X.shape[0]

    def record(self, step: int, theta: torch.Tensor) -> None:
        th = torch.nan_to_num(theta.to(torch.float64))
        vals = moments.domain_discrepancies(th, self.X, self.y, self.domains, gram=self.gram, bias=self.bias,
                                            check=False).largest()
        finite = torch.isfinite(theta).flatten(1).all(1).tolist()
        self.steps.append(step)
        self.values.append([[_finite(v) for v in row] if ok else [None] * len(TERMS)
                            for row, ok in zip(vals.tolist(), finite, strict=True)])
        logp = torch.log_softmax(moments.logits(th, self.X.to(torch.float64), self.bias), -1)
        nll = -logp.gather(-1, self.y.view(1, -1, 1).expand(th.shape[0], -1, 1)).mean((1, 2))
        self.ce.append([_finite(v) if ok else None for v, ok in zip(nll.tolist(), finite, strict=True)])

    def of_head(self, g: int) -> dict[str, Any]:
        out: dict[str, Any] = {"rows": self.rows, "step": list(self.steps), "ce": [v[g] for v in self.ce]}
        for k, t in enumerate(TERMS):
            out[t] = [v[g][k] for v in self.values]
        return out
