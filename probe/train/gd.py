"""Full-batch gradient descent on a weighted cross-entropy, for a grid of heads at once.

The label-free heads and the inferred domains need two things the L-BFGS solver
(``probe.train.solver``) does not give: a head *stopped early* (JTT's identification
model, the reference head of an inferred domain source), and a head pulled toward
another one, trained with its authors' optimiser (AFR: full-batch SGD, gradient-norm
clipping). Head g minimises

    f_g(θ) = Σ_i w_gi CE(θ x̃_i, y_i) + pull_g ‖θ − θ⁰_g‖²        (the bias included in the pull)

(x̃ = [x, 1]; with ``bias`` false the heads have no bias column and x̃ = x).

by ``steps`` steps θ ← θ − η_g ∇f_g(θ) from ``theta0``. Without a given step size, η_g =
1/L_g with L_g = ½ λ_max(Σ_i w_gi x̃_i x̃_iᵀ) + 2 pull_g, an upper bound on the largest
eigenvalue of f_g's Hessian (the softmax Hessian is at most ½ I): then ``steps`` counts
the same amount of descent whatever the features' scale, so "stopped after T steps" is a
property of the problem and not of its units. Gradients are closed form, in float64.
"""

from __future__ import annotations

import torch

from probe.moments.basics import design, log_softmax


def smoothness(Xt: torch.Tensor, w: torch.Tensor, pull: torch.Tensor) -> torch.Tensor:
    """(G,) L_g = ½ λ_max(Σ_i w_gi x̃_i x̃_iᵀ) + 2 pull_g (module docstring)."""
    moment = torch.einsum("gn,nd,ne->gde", w, Xt, Xt)
    return 0.5 * torch.linalg.eigvalsh(moment)[:, -1] + 2 * pull


def descend(X: torch.Tensor, y: torch.Tensor, w: torch.Tensor, steps: int, *, num_classes: int,
            theta0: torch.Tensor | None = None, pull: torch.Tensor | None = None, lr: torch.Tensor | None = None,
            clip: float | None = None, bias: bool = True) -> torch.Tensor:
    """(G, C, d+1) heads ((G, C, d) without ``bias``) after ``steps`` full-batch steps
    (module docstring), on X's device whatever the device of the other arguments.

    ``w`` (G, N) row weights (each row of a head's weights usually sums to 1); ``theta0``
    (G, C, D) the start and the pull's centre (default zeros); ``pull`` (G,) the pull's
    strength (default 0); ``lr`` (G,) the step sizes (default 1/L_g); ``clip``: each head's
    gradient is scaled to at most this Frobenius norm (torch's clip_grad_norm_)."""
    Xt = design(X.to(torch.float64), bias)
    f64 = dict(dtype=torch.float64, device=Xt.device)
    w = w.to(**f64)
    G, D = w.shape[0], Xt.shape[1]
    theta = torch.zeros(G, num_classes, D, **f64) if theta0 is None else theta0.to(**f64).clone()
    centre = theta.clone()
    pull = torch.zeros(G, **f64) if pull is None else pull.to(**f64)
    step = (1.0 / smoothness(Xt, w, pull)) if lr is None else lr.to(**f64)
    onehot = torch.nn.functional.one_hot(y.to(Xt.device).long(), num_classes).to(torch.float64)
    for _ in range(steps):
        p = log_softmax(torch.einsum("nd,gcd->gnc", Xt, theta)).exp_()
        grad = torch.einsum("gn,gnc,nd->gcd", w, p - onehot, Xt) + 2 * pull.view(G, 1, 1) * (theta - centre)
        if clip is not None:
            norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
            grad = grad * (clip / norm).clamp(max=1.0).view(G, 1, 1)
        theta -= step.view(G, 1, 1) * grad
    return theta
