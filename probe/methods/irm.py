"""IRMv1 (Arjovsky et al. 2019) on the head, in closed form."""

from __future__ import annotations

from probe.methods.base import GradientMethod, Penalty, register
from probe.records.grid import Param


@register
class IRM(GradientMethod):
    """The derivative of domain e's mean CE w.r.t. a scalar multiplier w of the logits,
    at w = 1, is (1/n_e) Σ_i (p_i − y_i)·z_i; the penalty is its square summed over domains."""

    name = "irm"
    display = "IRMv1"
    summary = "irm: IRMv1, the squared gradient of each domain's risk w.r.t. a logit scale (lam)"
    params = (Param("lam", "IRMv1 penalty weight λ.", default=1e2, grid=(1e1, 1e2, 1e3), search=("log", 1e0, 1e4),
                    symbol="λ"),)
    penalties = {"irm": Penalty("lam")}  # a function of the logits: no feature scale

    def penalty_terms(self, fwd, batch, gram):
        dw = (fwd.residual * fwd.z).sum(-1) @ batch.W  # (G, K')
        return {"irm": (dw**2).sum(-1)}
