"""Closed-form Moment Alignment (arXiv 2506.07378) on the head."""

from __future__ import annotations

from probe.grid import Param
from probe.methods.base import GradientMethod, Penalty, register


@register
class CMA(GradientMethod):
    """CE + α R_g + β R_H, with R_g, R_H the variances across domains of the per-domain
    gradients and Hessians of the cross-entropy (``probe.moments``, exact, closed form).
    α = 0 gives Hessian-only, β = 0 gradient-only alignment."""

    name = "cma"
    display = "CMA"
    summary = "cma: Closed-form Moment Alignment, gradient (alpha) and Hessian (beta) variance across domains"
    params = (
        Param("alpha", "CMA gradient-variance weight α (0: Hessian-only).", default=1e3, grid=(1e2, 1e3, 1e4),
              symbol="α"),
        Param("beta", "CMA Hessian-variance weight β (0: gradient-only).", default=1e2, grid=(1e1, 1e2, 1e3),
              symbol="β"),
    )
    penalties = {"grad": Penalty("alpha", order=1, dC=2), "hess": Penalty("beta", order=2, dC=2)}
    uses_gram = True

    @classmethod
    def memory_per_head(cls, B, C, D, K):
        return 6 * B * C * (C + 1) + (B * B if C > 3 else 0)  # the Hessian kernel's terms

    def penalty_terms(self, fwd, batch, gram):
        from probe import moments

        grad, hess = moments.variances_from_logits(
            fwd.z, batch.X, batch.y, batch.domains, batch.W, method=self.settings.hessian_method, gram=gram,
            bias=batch.bias)
        return {"grad": grad, "hess": hess}
