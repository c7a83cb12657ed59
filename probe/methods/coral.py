"""CORAL (Sun & Saenko 2016, as in DomainBed) on the head's own representation, its logits."""

from __future__ import annotations

from probe.methods.base import GradientMethod, Penalty, register
from probe.records.grid import Param


@register
class CORAL(GradientMethod):
    """CE + γ · mean over pairs of domains of ‖μ_e − μ_f‖²/C + ‖Σ_e − Σ_f‖²_F/C², with μ_e
    and Σ_e the mean and (unbiased) covariance of the logits z = Θx̃ over domain e's rows
    (DomainBed's CORAL applied to the last representation that trains). Aligning the
    frozen inputs instead, as the CMA authors' linear-probing code does, has no gradient
    with respect to the head: their row is domain-balanced ERM. The pairwise mean equals
    2K/(K−1) times the variance about the mean domain, so the two forms differ by a
    rescaling of γ only."""

    name = "coral"
    display = "CORAL"
    summary = "coral: CORAL on the logits, mean and covariance of z = Θx̃ matched across domains (gamma)"
    params = (Param("gamma", "CORAL weight γ of the logit mean and covariance differences.", default=1e0,
                    grid=(1e-1, 1e0, 1e1), search=("log", 1e-2, 1e2), symbol="γ"),)
    penalties = {"coral": Penalty("gamma")}  # a function of the logits: no feature scale

    @classmethod
    def memory_per_head(cls, B, C, D, K):
        return 4 * K * C * C + 4 * B * C

    def penalty_terms(self, fwd, batch, gram):
        import torch

        from probe.moments.products import domain_variance

        W, z = batch.W, fwd.z
        K, C = W.shape[1], z.shape[-1]
        mean = torch.einsum("nk,gnc->gkc", W, z)
        second = torch.einsum("nk,gnc,gnd->gkcd", W, z, z)
        n = (W > 0).sum(0).to(z.dtype)
        cov = (second - mean.unsqueeze(-1) * mean.unsqueeze(-2)) * (n / (n - 1).clamp_min(1)).view(1, K, 1, 1)
        pairs = 2.0 / max(K - 1, 1)  # mean over pairs = 2/(K-1) Σ_e ‖a_e − ā‖²
        pen = pairs * K * (domain_variance(mean) / C + domain_variance(cov) / C**2)
        return {"coral": pen}
