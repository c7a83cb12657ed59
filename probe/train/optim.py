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
                 eps: float = 1e-8, bias: bool = True) -> None:
        self.param, self.kind = param, kind
        shape = (-1,) + (1,) * (param.dim() - 1)
        self.lr = lr.view(shape)
        self.wd = weight_decay.view(shape)
        self.betas, self.momentum, self.eps = betas, momentum, eps
        self.m = torch.zeros_like(param)
        self.v = torch.zeros_like(param)
        self.t = torch.zeros(param.shape[0], dtype=param.dtype, device=param.device).view(shape)
        self.decay_mask = torch.ones_like(param[:1])
        if bias:
            self.decay_mask[..., -1] = 0  # no decay on the bias column

    def reset(self, heads: torch.Tensor) -> None:
        """Forget the moments of the heads where ``heads`` is True (annealing switch)."""
        keep = (~heads).to(self.param.dtype).view_as(self.t)
        self.m.mul_(keep)
        self.v.mul_(keep)
        self.t.mul_(keep)

    @torch.no_grad()
    def step(self, grad: torch.Tensor, active: torch.Tensor) -> None:
        """Update the heads where ``active`` is True; the others stay where they are.

        A head leaves the active set for good (diverged or stopped early), so its
        moments may keep changing harmlessly; only its parameters are frozen.
        """
        act = active.to(self.param.dtype).view_as(self.t)
        g = grad.add(self.param * self.decay_mask * self.wd)
        if self.kind == "sgd":
            self.m.mul_(self.momentum).add_(g)
            self.param.sub_(act * self.lr * self.m)
            return
        b1, b2 = self.betas
        self.t.add_(1.0)
        self.m.mul_(b1).add_(g, alpha=1 - b1)
        self.v.mul_(b2).addcmul_(g, g, value=1 - b2)
        step = self.lr * act / (1 - b1**self.t)
        denom = (self.v / (1 - b2**self.t)).sqrt_().add_(self.eps)
        self.param.addcdiv_(self.m * step, denom, value=-1.0)
