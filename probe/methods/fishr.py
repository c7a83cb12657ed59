"""Fishr (Ramé et al. 2022) on the head, in closed form."""

from __future__ import annotations

from probe.methods.base import GradientMethod, Penalty, register
from probe.records.grid import Param


@register
class Fishr(GradientMethod):
    """The variance across domains of the per-domain (diagonal) variances of per-sample
    gradients. A linear head's per-sample gradient is (p_i − y_i) x̃_iᵀ, so the variance
    is E_e[r²] x̃² − (E_e[r x̃])² in closed form (no BackPACK); the penalty is
    (1/K') Σ_e ‖v_e − v̄‖².

    As in the Fishr paper's code, each domain's variance is an exponential moving
    average over steps, v_e ← ema·v_e(previous, no gradient) + (1 − ema)·v_e(batch),
    divided by (1 − ema) so that the gradient reaching this batch's variance does not
    depend on ema; ema = 0 is the batch's own variance. The average runs from the
    first step, also while the penalty is annealed, per head and per domain."""

    name = "fishr"
    display = "Fishr"
    summary = "fishr: Fishr, the variance across domains of per-sample gradient variances (lam)"
    params = (Param("lam", "Fishr penalty weight λ.", default=1e2, grid=(1e1, 1e2, 1e3), search=("log", 1e0, 1e4), symbol="λ"),
              Param("ema", "Fishr moving-average factor of the per-domain gradient variances (0: none).",
                    default=0.95, maximum=0.999, search=("uniform", 0.9, 0.99)))
    heatmap = ("lam", "ema")
    stateful = True  # its moving averages move at every step, the penalty on or off (the authors' code)
    penalties = {"fishr": Penalty("lam", order=2)}  # variances of (p−y)x̃: x̃², squared

    @classmethod
    def memory_per_head(cls, B, C, D, K):
        return 8 * K * C * D + 4 * K * B * C

    def penalty_terms(self, fwd, batch, gram):
        var = self.moving_average(self.domain_variances(fwd, batch), batch)
        return {"fishr": ((var - var.mean(2, keepdim=True)) ** 2).sum((1, 3)).mean(1)}

    @staticmethod
    def domain_variances(fwd, batch):
        """(G, C, K', d̃) variance over each present domain's rows of the per-sample gradients."""

        from probe.moments import domain_sums

        Xt, r = batch.design, fwd.residual
        # Weighted sums over each domain's own rows as matmuls; no (G, B, C, d̃) tensor.
        mean_g = domain_sums(r, Xt, batch.W).transpose(1, 2)  # (G, C, K', d̃)
        mean_g2 = domain_sums(r * r, Xt * Xt, batch.W).transpose(1, 2)
        return mean_g2 - mean_g**2

    def moving_average(self, var, batch):
        """The corrected EMA of ``var`` (G, C, K', d̃) over the present domains ``batch.ids``."""
        import torch

        ema = self.hp["ema"].view(-1, 1, 1, 1)
        if not hasattr(self, "average"):  # zeros: the first step's average is the batch's variance
            G, C, _, D = var.shape
            self.average = torch.zeros(G, C, batch.num_domains, D, dtype=var.dtype, device=var.device)
        mixed = ema * self.average[:, :, batch.ids] + (1 - ema) * var
        self.average[:, :, batch.ids] = mixed.detach()
        return mixed / (1 - ema)
