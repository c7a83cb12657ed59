"""Training objectives for a grid of linear heads, one small class each (DomainBed style).

An objective turns a batch into a per-head loss ``(G,)``. Hyperparameters are
``(G,)`` tensors, one value per head, so a whole grid trains as one computation.
``penalty_on`` is a ``(G,)`` bool mask: False while a head is still annealing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from probe import moments


@dataclass
class Batch:
    X: torch.Tensor  # (B, d)
    y: torch.Tensor  # (B,)
    domains: torch.Tensor  # (B,) ids in 0..K-1
    num_domains: int
    # Weight of each domain in the natural (pooled) CE: its share of the training rows.
    domain_share: torch.Tensor  # (K,)


@dataclass
class Forward:
    """What the closed-form penalties need from one forward pass of the grid."""

    z: torch.Tensor  # (G, B, C) logits
    residual: torch.Tensor  # (G, B, C) p - onehot(y): per-sample dCE/dlogits
    W: torch.Tensor  # (B, K') 1/n_e domain weights over present domains
    ids: torch.Tensor  # (K',) present domain ids
    losses: torch.Tensor  # (G, K') per-domain mean CE


def forward(theta: torch.Tensor, batch: Batch) -> Forward:
    z = moments.logits(theta, batch.X)
    W = moments.domain_weights(batch.domains, dtype=theta.dtype)
    logp = torch.log_softmax(z, -1)
    nll = -logp.gather(-1, batch.y.expand(z.shape[0], -1).unsqueeze(-1)).squeeze(-1)
    residual = logp.exp() - F.one_hot(batch.y, z.shape[-1]).to(z.dtype)
    return Forward(z, residual, W, moments.present_domains(batch.domains), nll @ W)


OBJECTIVES: dict[str, type[Objective]] = {}


def register(cls: type[Objective]) -> type[Objective]:
    OBJECTIVES[cls.name] = cls
    return cls


class Objective:
    """Base: cross-entropy with a documented weighting, plus an optional penalty."""

    name: ClassVar[str]
    #: hyperparameter -> default; the CLI exposes these as flags
    hparams: ClassVar[dict[str, float]] = {}
    #: "pooled": natural-distribution mean CE (domain-balanced batches are
    #: re-weighted by each domain's share of the training rows); "domain": mean
    #: of per-domain mean CEs (group-balanced).
    ce: ClassVar[str] = "pooled"
    #: hyperparameters whose penalty waits for `anneal` steps
    penalized: ClassVar[bool] = False

    def __init__(self, hp: dict[str, torch.Tensor], normalize: str | None = None,
                 hessian_method: str = "auto") -> None:
        self.hp = hp
        self.normalize = normalize
        self.hessian_method = hessian_method

    def cross_entropy(self, losses: torch.Tensor, batch: Batch, ids: torch.Tensor) -> torch.Tensor:
        if self.ce == "domain":
            return losses.mean(-1)
        share = batch.domain_share[ids]
        return (losses * share).sum(-1) / share.sum()

    def loss(self, theta: torch.Tensor, batch: Batch, penalty_on: torch.Tensor) -> tuple[torch.Tensor, dict]:
        losses = moments.per_domain_losses(theta, batch.X, batch.y, batch.domains)
        ids = moments.present_domains(batch.domains)
        ce = self.cross_entropy(losses, batch, ids)
        return ce, {"ce": ce}


@register
class ERM(Objective):
    name = "erm"


@register
class Reweight(Objective):
    """Group-balanced ERM: every domain weighs the same in the loss."""

    name = "reweight"
    ce = "domain"


@register
class CMA(Objective):
    """Closed-form Moment Alignment: CE + α R_g + β R_H (arXiv 2506.07378)."""

    name = "cma"
    hparams = {"alpha": 1e3, "beta": 1e2}
    penalized = True

    def loss(self, theta, batch, penalty_on):
        t = moments.penalty_terms(theta, batch.X, batch.y, batch.domains, normalize=self.normalize,
                                  method=self.hessian_method, check=False)
        ce = self.cross_entropy(t.losses, batch, t.domain_ids)
        on = penalty_on.to(theta.dtype)
        total = ce + on * (self.hp["alpha"] * t.grad_variance + self.hp["beta"] * t.hess_variance)
        return total, {"ce": ce, "grad": t.grad_variance, "hess": t.hess_variance}


@register
class IRM(Objective):
    """IRMv1: squared gradient of each domain's CE w.r.t. a scalar logit scale at 1."""

    name = "irm"
    hparams = {"lam": 1e2}
    penalized = True

    def loss(self, theta, batch, penalty_on):
        f = forward(theta, batch)
        dw = (f.residual * f.z).sum(-1) @ f.W  # d CE_e(w z)/dw at w = 1, per domain
        pen = (dw**2).sum(-1)
        ce = self.cross_entropy(f.losses, batch, f.ids)
        return ce + penalty_on.to(theta.dtype) * self.hp["lam"] * pen, {"ce": ce, "irm": pen}


@register
class VREx(Objective):
    """V-REx: variance across domains of the per-domain mean CE."""

    name = "vrex"
    hparams = {"lam": 1e1}
    penalized = True

    def loss(self, theta, batch, penalty_on):
        losses = moments.per_domain_losses(theta, batch.X, batch.y, batch.domains)
        ids = moments.present_domains(batch.domains)
        pen = losses.var(-1, unbiased=False) if losses.shape[-1] > 1 else losses.sum(-1) * 0
        ce = self.cross_entropy(losses, batch, ids)
        return ce + penalty_on.to(ce.dtype) * self.hp["lam"] * pen, {"ce": ce, "vrex": pen}


@register
class Fishr(Objective):
    """Fishr on the head: variance across domains of per-sample gradient variances.

    Per-sample gradients of a linear head are (p_i - y_i) x̃_iᵀ, so the per-domain
    (diagonal) gradient variance is E[r²] x̃² - (E[r x̃])², in closed form.
    """

    name = "fishr"
    hparams = {"lam": 1e2}
    penalized = True

    def loss(self, theta, batch, penalty_on):
        f = forward(theta, batch)
        Xt = moments.augment(batch.X)
        r = f.residual
        mean_g = torch.einsum("nk,gnc,nd->gkcd", f.W, r, Xt)
        mean_g2 = torch.einsum("nk,gnc,nd->gkcd", f.W, r * r, Xt * Xt)
        var = mean_g2 - mean_g**2
        pen = ((var - var.mean(1, keepdim=True)) ** 2).sum((2, 3)).mean(1)
        ce = self.cross_entropy(f.losses, batch, f.ids)
        return ce + penalty_on.to(theta.dtype) * self.hp["lam"] * pen, {"ce": ce, "fishr": pen}


@register
class GroupDRO(Objective):
    """GroupDRO: exponentiated-gradient weights q over domain losses (Sagawa et al.)."""

    name = "groupdro"
    hparams = {"eta": 1e-2}

    def loss(self, theta, batch, penalty_on):
        losses = moments.per_domain_losses(theta, batch.X, batch.y, batch.domains)
        ids = moments.present_domains(batch.domains)
        if not hasattr(self, "q"):
            self.q = torch.full((theta.shape[0], batch.num_domains), 1.0 / batch.num_domains,
                                dtype=theta.dtype, device=theta.device)
        q = self.q[:, ids] * torch.exp(self.hp["eta"].unsqueeze(-1) * losses.detach())
        self.q[:, ids] = q / q.sum(-1, keepdim=True) * self.q[:, ids].sum(-1, keepdim=True)
        self.q = self.q / self.q.sum(-1, keepdim=True)
        w = self.q[:, ids]
        robust = (w * losses).sum(-1) / w.sum(-1)
        return robust, {"ce": losses.mean(-1), "robust": robust}
