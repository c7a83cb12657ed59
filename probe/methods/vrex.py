"""V-REx (Krueger et al. 2021)."""

from __future__ import annotations

from probe.methods.base import GradientMethod, Penalty, register
from probe.records.grid import Param


@register
class VREx(GradientMethod):
    """The variance across domains of the per-domain mean CE."""

    name = "vrex"
    display = "V-REx"
    summary = "vrex: V-REx, the variance of the per-domain risks (lam)"
    params = (Param("lam", "V-REx penalty weight λ.", default=1e1, grid=(1e0, 1e1, 1e2), search=("log", 1e-1, 1e3),
                    symbol="λ"),)
    penalties = {"vrex": Penalty("lam")}  # a function of the losses: no feature scale

    def penalty_terms(self, fwd, batch, gram):
        losses = fwd.losses
        if losses.shape[-1] < 2:
            return {"vrex": losses.sum(-1) * 0}  # zero, still attached to the graph
        return {"vrex": losses.var(-1, unbiased=False)}
