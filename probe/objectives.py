"""Training objectives for a grid of linear heads, one small class each (DomainBed style).

An objective turns a batch into a per-head loss ``(G,)``; hyperparameters are
``(G,)`` tensors, one value per head, so a whole grid trains as one computation.
``penalty_on`` is a ``(G,)`` bool mask: False while a head is still annealing.
Register a new objective with ``@register``; its ``hparams`` (name -> default)
become grid flags of `probe fit`.

Cross-entropy weighting (``ce``), the same for every objective but GroupDRO:

* ``"pooled"``: the natural-distribution mean CE. Minibatches are domain-balanced,
  so each domain's mean CE is weighted by its share of the training rows
  (importance weights); the expectation equals the plain mean over training rows.
  Default of erm, cma, irm, vrex and fishr.
* ``"domain"``: the mean of the per-domain mean CEs (every domain weighs the same).
  Default of reweight (group-balanced ERM).

GroupDRO replaces the CE by its own robust weighting of the domain losses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from probe import moments

CE_WEIGHTINGS = ("pooled", "domain")


@dataclass
class Batch:
    """One minibatch, with what every head of the cohort shares about it."""

    X: torch.Tensor  # (B, d) preprocessed features
    y: torch.Tensor  # (B,) int64
    domains: torch.Tensor  # (B,) ids in 0..K-1
    num_domains: int  # K
    domain_share: torch.Tensor  # (K,) each domain's share of the training rows
    W: torch.Tensor | None = None  # (B, K') 1/n_e weights over the present domains
    ids: torch.Tensor | None = None  # (K',) ids of the present domains

    def __post_init__(self) -> None:
        if self.W is None:
            self.W = moments.domain_weights(self.domains, self.num_domains, dtype=self.X.dtype)
        if self.ids is None:
            self.ids = moments.present_domains(self.domains, self.num_domains)


@dataclass
class Forward:
    """One logits pass of the grid, and what the closed-form penalties need from it."""

    z: torch.Tensor  # (G, B, C) logits
    p: torch.Tensor  # (G, B, C) probabilities
    residual: torch.Tensor  # (G, B, C) p - onehot(y): per-sample dCE/dlogits
    losses: torch.Tensor  # (G, K') per-domain mean CE


def forward(theta: torch.Tensor, batch: Batch) -> Forward:
    z = moments.logits(theta, batch.X)
    logp = torch.log_softmax(z, -1)
    nll = -logp.gather(-1, batch.y.view(1, -1, 1).expand(z.shape[0], -1, 1)).squeeze(-1)
    p = logp.exp()
    residual = p.scatter_add(-1, batch.y.view(1, -1, 1).expand(z.shape[0], -1, 1),
                             torch.full_like(p[..., :1], -1.0))
    return Forward(z, p, residual, nll @ batch.W)


OBJECTIVES: dict[str, type[Objective]] = {}


def register(cls: type[Objective]) -> type[Objective]:
    OBJECTIVES[cls.name] = cls
    return cls


class Objective:
    """Base: cross-entropy with a documented weighting, plus an optional penalty."""

    name: ClassVar[str]
    #: method hyperparameter -> default; the CLI exposes each as a grid flag
    hparams: ClassVar[dict[str, float]] = {}
    #: default CE weighting (module docstring); ``None``: the objective's own
    ce_default: ClassVar[str | None] = "pooled"
    #: has a penalty that `anneal` delays
    penalized: ClassVar[bool] = False
    #: uses the Gram matrix X̃X̃ᵀ of the batch (the trainer may supply it precomputed)
    uses_gram: ClassVar[bool] = False
    #: names of the penalty terms it logs (history["penalty"])
    penalty_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, hp: dict[str, torch.Tensor], normalize: str | None = None,
                 hessian_method: str = "auto", ce: str | None = None) -> None:
        if ce is not None and ce not in CE_WEIGHTINGS:
            raise ValueError(f"ce={ce!r} is not one of {CE_WEIGHTINGS}")
        self.hp = hp
        self.normalize = normalize
        self.hessian_method = hessian_method
        self.ce = ce if ce is not None and self.ce_default is not None else self.ce_default

    def cross_entropy(self, losses: torch.Tensor, batch: Batch) -> torch.Tensor:
        if self.ce == "domain":
            return losses.mean(-1)
        share = batch.domain_share[batch.ids]
        return (losses * share).sum(-1) / share.sum()

    def _with_penalty(self, ce: torch.Tensor, weight: torch.Tensor, pen: torch.Tensor,
                      penalty_on: torch.Tensor) -> torch.Tensor:
        return ce + penalty_on.to(ce.dtype) * weight * pen

    def loss(self, theta: torch.Tensor, batch: Batch, penalty_on: torch.Tensor,
             gram: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ce = self.cross_entropy(forward(theta, batch).losses, batch)
        return ce, {"ce": ce}


@register
class ERM(Objective):
    name = "erm"


@register
class Reweight(Objective):
    """Group-balanced ERM: every domain weighs the same in the loss."""

    name = "reweight"
    ce_default = "domain"


def _few_domains(losses: torch.Tensor) -> torch.Tensor:
    return losses.sum(-1) * 0  # a zero penalty still attached to the graph


@register
class CMA(Objective):
    """Closed-form Moment Alignment: CE + α R_g + β R_H (arXiv 2506.07378), with R_g,
    R_H the variances across domains of the per-domain gradients and Hessians
    (``probe.moments``). α = 0 gives Hessian-only, β = 0 gradient-only alignment."""

    name = "cma"
    hparams = {"alpha": 1e3, "beta": 1e2}
    penalized = True
    uses_gram = True
    penalty_names = ("grad", "hess")

    def loss(self, theta, batch, penalty_on, gram=None):
        t = moments.penalty_terms(theta, batch.X, batch.y, batch.domains, normalize=self.normalize,
                                  method=self.hessian_method, gram=gram, check=False)
        ce = self.cross_entropy(t.losses, batch)
        pen = self.hp["alpha"] * t.grad_variance + self.hp["beta"] * t.hess_variance
        total = ce + penalty_on.to(ce.dtype) * pen
        return total, {"ce": ce, "grad": t.grad_variance, "hess": t.hess_variance}


@register
class IRM(Objective):
    """IRMv1 (Arjovsky et al. 2019) on the head, in closed form: the derivative of
    domain e's mean CE w.r.t. a scalar multiplier w of the logits, at w = 1, is
    (1/n_e) Σ_i (p_i − y_i)·z_i; the penalty is its square summed over domains."""

    name = "irm"
    hparams = {"lam": 1e2}
    penalized = True
    penalty_names = ("irm",)

    def loss(self, theta, batch, penalty_on, gram=None):
        f = forward(theta, batch)
        dw = (f.residual * f.z).sum(-1) @ batch.W  # (G, K')
        pen = (dw**2).sum(-1)
        ce = self.cross_entropy(f.losses, batch)
        return self._with_penalty(ce, self.hp["lam"], pen, penalty_on), {"ce": ce, "irm": pen}


@register
class VREx(Objective):
    """V-REx (Krueger et al. 2021): variance across domains of the per-domain mean CE."""

    name = "vrex"
    hparams = {"lam": 1e1}
    penalized = True
    penalty_names = ("vrex",)

    def loss(self, theta, batch, penalty_on, gram=None):
        losses = forward(theta, batch).losses
        pen = losses.var(-1, unbiased=False) if losses.shape[-1] > 1 else _few_domains(losses)
        ce = self.cross_entropy(losses, batch)
        return self._with_penalty(ce, self.hp["lam"], pen, penalty_on), {"ce": ce, "vrex": pen}


@register
class Fishr(Objective):
    """Fishr (Ramé et al. 2022) on the head: variance across domains of the per-domain
    (diagonal) variances of per-sample gradients. A linear head's per-sample gradient
    is (p_i − y_i) x̃_iᵀ, so the variance is E_e[r²] x̃² − (E_e[r x̃])² in closed form
    (no BackPACK); the penalty is (1/K') Σ_e ‖v_e − v̄‖²."""

    name = "fishr"
    hparams = {"lam": 1e2}
    penalized = True
    penalty_names = ("fishr",)

    def loss(self, theta, batch, penalty_on, gram=None):
        f = forward(theta, batch)
        Xt = moments.augment(batch.X)
        r = f.residual
        G, B, C = r.shape
        K = batch.W.shape[1]
        # Weighted sums over rows as matmuls: (G·C·K', B) @ (B, d̃); no (G, B, C, d̃) tensor.
        rw = (r.permute(0, 2, 1).unsqueeze(2) * batch.W.T.unsqueeze(0).unsqueeze(0))  # (G, C, K', B)
        mean_g = (rw.reshape(-1, B) @ Xt).view(G, C, K, -1)
        mean_g2 = ((rw * r.permute(0, 2, 1).unsqueeze(2)).reshape(-1, B) @ (Xt * Xt)).view(G, C, K, -1)
        var = mean_g2 - mean_g**2
        pen = ((var - var.mean(2, keepdim=True)) ** 2).sum((1, 3)).mean(1)
        ce = self.cross_entropy(f.losses, batch)
        return self._with_penalty(ce, self.hp["lam"], pen, penalty_on), {"ce": ce, "fishr": pen}


@register
class GroupDRO(Objective):
    """GroupDRO (Sagawa et al. 2020): online exponentiated-gradient weights q over
    the domain losses, q_e ← q_e·exp(η·L_e), renormalised; the loss is Σ_e q_e L_e.
    ``q`` is per head, (G, K), and starts uniform."""

    name = "groupdro"
    hparams = {"eta": 1e-2}
    ce_default = None
    penalty_names = ("robust",)

    def loss(self, theta, batch, penalty_on, gram=None):
        losses = forward(theta, batch).losses
        ids = batch.ids
        if not hasattr(self, "q"):
            self.q = torch.full((theta.shape[0], batch.num_domains), 1.0 / batch.num_domains,
                                dtype=theta.dtype, device=theta.device)
        with torch.no_grad():
            # Domains absent from the batch keep their mass; only present ones move.
            present = self.q[:, ids]
            q = present * torch.exp(self.hp["eta"].unsqueeze(-1) * losses.detach())
            self.q[:, ids] = q / q.sum(-1, keepdim=True) * present.sum(-1, keepdim=True)
        w = self.q[:, ids]
        robust = (w * losses).sum(-1) / w.sum(-1)
        return robust, {"ce": losses.mean(-1), "robust": robust}
