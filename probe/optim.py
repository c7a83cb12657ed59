"""Optimizers for a stack of G heads with per-head learning rates and state resets.

torch.optim keeps one learning rate per parameter group and cannot reset the
state of some heads only, which annealing needs; these are the few lines of
Adam and SGD that do.
"""

from __future__ import annotations

import torch


class BatchedOptimizer:
    """Adam (default) or SGD with momentum over a ``(G, ...)`` parameter tensor.

    ``lr`` and ``weight_decay`` are ``(G,)``; weight decay is L2 on all columns
    but the last (the bias), added to the gradient (coupled, like sklearn's C).
    """

    def __init__(self, param: torch.Tensor, lr: torch.Tensor, weight_decay: torch.Tensor,
                 kind: str = "adam", betas: tuple[float, float] = (0.9, 0.999), momentum: float = 0.9,
                 eps: float = 1e-8) -> None:
        self.param, self.kind = param, kind
        shape = (-1,) + (1,) * (param.dim() - 1)
        self.lr = lr.view(shape)
        self.wd = weight_decay.view(shape)
        self.betas, self.momentum, self.eps = betas, momentum, eps
        self.m = torch.zeros_like(param)
        self.v = torch.zeros_like(param)
        self.t = torch.zeros(param.shape[0], dtype=param.dtype, device=param.device).view(shape)
        self.decay_mask = torch.ones_like(param[:1])
        self.decay_mask[..., -1] = 0  # no decay on the bias column

    def reset(self, heads: torch.Tensor) -> None:
        """Forget the moments of the heads where ``heads`` is True (annealing switch)."""
        keep = (~heads).to(self.param.dtype).view_as(self.t)
        self.m.mul_(keep)
        self.v.mul_(keep)
        self.t.mul_(keep)

    @torch.no_grad()
    def step(self, grad: torch.Tensor, active: torch.Tensor) -> None:
        """Update the heads where ``active`` is True; the others stay frozen."""
        act = active.to(self.param.dtype).view_as(self.t)
        g = grad + self.wd * self.decay_mask * self.param
        if self.kind == "sgd":
            self.m.mul_(1 - act * (1 - self.momentum)).add_(act * g)
            self.param.sub_(act * self.lr * self.m)
            return
        b1, b2 = self.betas
        self.t.add_(act)
        t = self.t.clamp(min=1)
        self.m.copy_(torch.where(act > 0, b1 * self.m + (1 - b1) * g, self.m))
        self.v.copy_(torch.where(act > 0, b2 * self.v + (1 - b2) * g * g, self.v))
        mhat = self.m / (1 - b1**t)
        vhat = self.v / (1 - b2**t)
        self.param.sub_(act * self.lr * mhat / (vhat.sqrt() + self.eps))
