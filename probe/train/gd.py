"""Full-batch gradient descent on a weighted cross-entropy, for a grid of heads at once.

The label-free heads and the inferred domains need two things the L-BFGS solver
(``probe.train.solver``) does not give: a head *stopped early* (JTT's identification
model, the reference head of an inferred domain source), and a head pulled toward
another one, trained with its authors' optimiser (AFR: full-batch SGD, gradient-norm
clipping). Head g minimises

    f_g(θ) = Σ_i w_gi CE(θ x̃_i, y_i) + pull_g ‖θ − θ⁰_g‖²        (the bias included in the pull)

by ``steps`` steps θ ← θ − η_g ∇f_g(θ) from ``theta0``. Without a given step size, η_g =
1/L_g with L_g = ½ λ_max(Σ_i w_gi x̃_i x̃_iᵀ) + 2 pull_g, an upper bound on the largest
eigenvalue of f_g's Hessian (the softmax Hessian is at most ½ I): then ``steps`` counts
the same amount of descent whatever the features' scale, so "stopped after T steps" is a
property of the problem and not of its units. Gradients are closed form, in float64.
"""

from __future__ import annotations

import torch

from probe.moments.basics import augment, log_softmax


def smoothness(Xt: torch.Tensor, w: torch.Tensor, pull: torch.Tensor) -> torch.Tensor:
    """(G,) L_g = ½ λ_max(Σ_i w_gi x̃_i x̃_iᵀ) + 2 pull_g (module docstring)."""
    moment = torch.einsum("gn,nd,ne->gde", w, Xt, Xt)
    return 0.5 * torch.linalg.eigvalsh(moment)[:, -1] + 2 * pull


def descend(X: torch.Tensor, y: torch.Tensor, w: torch.Tensor, steps: int, *, num_classes: int,
            theta0: torch.Tensor | None = None, pull: torch.Tensor | None = None, lr: torch.Tensor | None = None,
            clip: float | None = None) -> torch.Tensor:
    """(G, C, d+1) heads after ``steps`` full-batch steps (module docstring).

    ``w`` (G, N) row weights (each row of a head's weights usually sums to 1); ``theta0``
    (G, C, d+1) the start and the pull's centre (default zeros); ``pull`` (G,) the pull's
    strength (default 0); ``lr`` (G,) the step sizes (default 1/L_g); ``clip``: each head's
    gradient is scaled to at most this Frobenius norm (torch's clip_grad_norm_)."""
    Xt = augment(X.to(torch.float64))
    w = w.to(torch.float64)
    G, D = w.shape[0], Xt.shape[1]
    theta = (torch.zeros(G, num_classes, D, dtype=torch.float64, device=Xt.device) if theta0 is None
             else theta0.to(torch.float64).clone())
    centre = theta.clone()
    pull = torch.zeros(G, dtype=torch.float64, device=Xt.device) if pull is None else pull.to(torch.float64)
    step = (1.0 / smoothness(Xt, w, pull)) if lr is None else lr.to(torch.float64)
    onehot = torch.nn.functional.one_hot(y.long(), num_classes).to(torch.float64)
    for _ in range(steps):
        p = log_softmax(torch.einsum("nd,gcd->gnc", Xt, theta)).exp_()
        grad = torch.einsum("gn,gnc,nd->gcd", w, p - onehot, Xt) + 2 * pull.view(G, 1, 1) * (theta - centre)
        if clip is not None:
            norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
            grad = grad * (clip / norm).clamp(max=1.0).view(G, 1, 1)
        theta -= step.view(G, 1, 1) * grad
    return theta
