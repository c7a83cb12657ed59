"""Closed-form Moment Alignment (arXiv 2506.07378) on the head, with an exact third-order term."""

from __future__ import annotations

from base.errors import UserError
from probe.methods.base import GradientMethod, Penalty, register
from probe.records.grid import Param

#: the exact forms of the Hessian variance (probe.moments.hessian.METHODS), declared here
#: without importing torch, so that `--help` stays quick; a test checks they agree
HESSIAN_METHODS = ("auto", "kernel", "binary", "direct")


@register
class CMA(GradientMethod):
    """CE + α R_g + β R_H + γ R₃, with R_g, R_H, R₃ the variances across domains of the
    per-domain gradients, Hessians and third derivatives of the cross-entropy
    (``probe.moments``, exact, closed form). α = 0 gives Hessian-only, β = 0
    gradient-only alignment; γ = 0 (the default) is the paper's CMA, and R₃ is then
    not computed at all."""

    name = "cma"
    display = "CMA"
    summary = ("cma: Closed-form Moment Alignment, gradient (alpha), Hessian (beta) and third-derivative (gamma) "
               "variance across domains")
    params = (
        Param("alpha", "CMA gradient-variance weight α (0: Hessian-only).", default=1e3, grid=(1e2, 1e3, 1e4), search=("log", 1e1, 1e5),
              symbol="α"),
        Param("beta", "CMA Hessian-variance weight β (0: gradient-only).", default=1e2, grid=(1e1, 1e2, 1e3), search=("log", 1e0, 1e4),
              symbol="β"),
        Param("gamma", "CMA third-derivative-variance weight γ, beyond the paper (0: the paper's CMA).",
              default=0.0, grid=(0.0,), symbol="γ", label_nonzero=True),
    )
    penalties = {"grad": Penalty("alpha", order=1, dC=2), "hess": Penalty("beta", order=2, dC=2),
                 "third": Penalty("gamma", order=3, dC=2)}
    uses_gram = True
    options = (Param("hessian_method", "cma: the Hessian-variance form, auto, kernel, binary (two classes) or "
                                       "direct; all exact, they differ only in cost.", kind=str, default="auto",
                     choices=HESSIAN_METHODS),)
    heatmap = ("alpha", "beta")

    def __init__(self, hp, settings, scale=None):
        super().__init__(hp, settings, scale)
        # Decided once per chunk (one device read): R₃ costs about as much as R_H.
        self.third = bool((hp["gamma"] != 0).any())
        self.hessian_method = self.option(settings, "hessian_method")

    @classmethod
    def check_features(cls, fs, settings):
        if cls.option(settings, "hessian_method") == "binary" and fs.num_classes != 2:
            raise UserError(f"`hessian_method` binary needs two classes, {fs.path} has {fs.num_classes}; "
                            "use auto or kernel")

    @classmethod
    def memory_per_head(cls, B, C, D, K):
        # the Hessian kernel's terms, and the third-order kernel's (G, B, C) products
        return 6 * B * C * (C + 1) + 8 * B * C + (B * B if C > 3 else 0)

    def penalty_terms(self, fwd, batch, gram):
        from probe import moments

        if self.third and gram is None:  # one X̃X̃ᵀ for the three terms
            gram = moments.feature_gram(batch.X, batch.bias)
        grad, hess = moments.variances_from_logits(
            fwd.z, batch.X, batch.y, batch.domains, batch.W, method=self.hessian_method, gram=gram,
            bias=batch.bias, probs=fwd.p)
        terms = {"grad": grad, "hess": hess}
        if self.third:
            terms["third"] = moments.third_variance_from_logits(fwd.z, batch.X, batch.W, gram=gram, bias=batch.bias,
                                                                 probs=fwd.p)
        return terms
