"""Hessian-gradient-product alignment (Hemati et al. 2023), exact, on the head."""

from __future__ import annotations

from probe.methods.base import GradientMethod, Penalty, register
from probe.records.grid import Param


@register
class HGP(GradientMethod):
    """CE + α R_g + β R_HG: the variances across domains of each domain's gradient G_e
    and of its own Hessian-gradient product H_e G_e, both in closed form
    (``probe.moments.products``: O(N C d) per head, no double backward). The authors'
    linear-probing code computes every domain's term from the whole batch, so its
    domain terms coincide; here each domain uses its own rows. α and β weigh the same
    kind of variance as CMA's (with ``dC``, each derivative is divided by d·C)."""

    name = "hgp"
    display = "HGP"
    summary = "hgp: Hessian-gradient-product alignment, variance of G_e (alpha) and of H_e G_e (beta)"
    params = (
        Param("alpha", "HGP gradient-variance weight α.", default=1e1, grid=(1e0, 1e1, 1e2), search=("log", 1e-1, 1e3), symbol="α"),
        Param("beta", "HGP weight β of the variance of H_e G_e.", default=1e1, grid=(1e0, 1e1, 1e2), search=("log", 1e-1, 1e3), symbol="β"),
    )
    # G_e is of degree 1 in x̃ and H_e G_e of degree 3: their variances of degree 2 and 6.
    heatmap = ("alpha", "beta")
    penalties = {"grad": Penalty("alpha", order=1, dC=2), "hgp": Penalty("beta", order=3, dC=4)}

    @classmethod
    def memory_per_head(cls, B, C, D, K):
        return 8 * K * C * D + 6 * B * C

    def penalty_terms(self, fwd, batch, gram):
        from probe.moments.products import domain_variance, hessian_vector_products

        Xt = batch.design
        G = fwd.domain_gradients(batch)  # (G, K', C, d̃)
        HG = hessian_vector_products(fwd.p, Xt, batch.domains, G)
        return {"grad": domain_variance(G), "hgp": domain_variance(HG)}
