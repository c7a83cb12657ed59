"""Hessian alignment by Hutchinson's estimate of each domain's Hessian diagonal (Hemati et al. 2023)."""

from __future__ import annotations

from probe.methods.base import GradientMethod, Penalty, register
from probe.records.grid import Param


@register
class Hutchinson(GradientMethod):
    """CE + α R_g + β R_diag: the variances across domains of the gradients and of the
    Hessian diagonals, each diagonal estimated per domain as (1/R) Σ_r z_r ∘ (H_e z_r)
    with R Rademacher probes (``probes``) drawn per step, by closed-form Hessian-vector
    products. The exact diagonal is cheap for a linear head; this method exists so the
    estimate can be compared with exact alignment (CMA) inside the same trainer."""

    name = "hutchinson"
    display = "Hutchinson"
    summary = ("hutchinson: Hessian-diagonal alignment by Hutchinson's estimate (probes per step), "
               "gradient (alpha) and diagonal (beta) variance")
    params = (
        Param("alpha", "Hutchinson gradient-variance weight α.", default=1e1, grid=(1e0, 1e1, 1e2), search=("log", 1e-1, 1e3), symbol="α"),
        Param("beta", "Hutchinson weight β of the variance of the Hessian diagonals.", default=1e1,
              grid=(1e0, 1e1, 1e2), search=("log", 1e-1, 1e3), symbol="β"),
    )
    options = (Param("probes", "hutchinson: Rademacher probes per step for each domain's Hessian-diagonal "
                               "estimate.", kind=int, default=100, minimum=1),)
    heatmap = ("alpha", "beta")
    penalties = {"grad": Penalty("alpha", order=1, dC=2), "hdiag": Penalty("beta", order=2, dC=2)}

    @classmethod
    def memory_per_head(cls, B, C, D, K):
        return 8 * K * C * D + 6 * B * C

    def penalty_terms(self, fwd, batch, gram):
        from probe.moments.products import domain_variance, hutchinson_diagonals, rademacher

        Xt = batch.design
        G = fwd.domain_gradients(batch)
        # The probes depend on (seed, step) only: the same for every head and chunk; modulo
        # 2^64, the range torch seeds from, so that no 63-bit seed overflows it
        Z = rademacher((self.option(self.settings, "probes"), fwd.p.shape[-1], Xt.shape[1]),
                       (batch.seed * 1_000_003 + batch.step) % 2**64, Xt.dtype, Xt.device)
        return {"grad": domain_variance(G), "hdiag": domain_variance(hutchinson_diagonals(fwd.p, Xt, batch.W, Z))}
