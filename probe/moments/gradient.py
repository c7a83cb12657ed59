"""Per-domain gradients and losses of the mean cross-entropy, and the gradient variance R_g."""

from __future__ import annotations

from typing import Literal

from base.lazy import lazy_import
from probe.moments.basics import (
    NORMALIZE_OPTIONS,
    Normalize,
    _centred,
    _finish,
    _logits,
    _scale,
    _weights,
    _zero,
    design,
    domain_sums,
    feature_gram,
    log_softmax,
    softmax,
)
from probe.moments.checks import _as_grid, _check_choice, _validate

torch = lazy_import("torch")

GradMethod = Literal["auto", "direct", "kernel"]
GRAD_METHODS: tuple[str, ...] = ("auto", "direct", "kernel")


def _per_domain_grads(P: torch.Tensor, Y1: torch.Tensor, Xt: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """(G, K, C, d̃): sum_n W[n,k] (P-Y)[g,n,c] x̃[n]."""
    return domain_sums(P - Y1, Xt, W)


def per_domain_gradients(theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor, domains: torch.Tensor,
                         num_domains: int | None = None, normalize: Normalize = None, *,
                         bias: bool = True) -> torch.Tensor:
    """(G, K', C, D) gradients of each present domain's mean CE (or (K', C, D)); D = d+1, or d
    for a head without a bias column (``bias=False``)."""
    _check_choice("normalize", normalize, NORMALIZE_OPTIONS)
    _validate(theta, X, y, domains, num_domains, bias=bias)
    th, single = _as_grid(theta)
    W, _ = _weights(domains, th.dtype)
    P = softmax(_logits(th, X, bias))
    Y1 = torch.nn.functional.one_hot(y, th.shape[1]).to(th.dtype)
    Gd = _per_domain_grads(P, Y1, design(X, bias), W) * _scale(normalize, X.shape[1], th.shape[1])
    return _finish(Gd, single)


def _losses(z: torch.Tensor, y: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    nll = -log_softmax(z).gather(-1, y.view(1, -1, 1).expand(z.shape[0], -1, 1)).squeeze(-1)
    return nll @ W


def per_domain_losses(theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor, domains: torch.Tensor,
                      num_domains: int | None = None, *, bias: bool = True) -> torch.Tensor:
    """(G, K') mean cross-entropy of each present domain (or (K',) for one head)."""
    _validate(theta, X, y, domains, num_domains, bias=bias)
    th, single = _as_grid(theta)
    W, _ = _weights(domains, th.dtype)
    return _finish(_losses(_logits(th, X, bias), y, W), single)


def choose_gradient_method(G: int, N: int, d: int, C: int, K: int, *, gram_given: bool = False) -> str:
    """``"kernel"`` when ``N² (d̃ + G C)`` beats the direct ``G K N C d̃``, else ``"direct"``."""
    d1 = d + 1
    direct = 2.0 * G * K * N * C * d1
    kernel = (0.0 if gram_given else 2.0 * N * N * d1) + 2.0 * N * N * (K + G * C)
    return "kernel" if kernel < direct else "direct"


def _gradient_from_probs(P: torch.Tensor, Y1: torch.Tensor, X: torch.Tensor, W: torch.Tensor, method: str,
                         gram: torch.Tensor | None, bias: bool = True) -> torch.Tensor:
    """K'·R_g per head (unnormalised), K' = W.shape[1] ≥ 2."""
    G, N, C = P.shape
    K = W.shape[1]
    if method == "auto":
        method = choose_gradient_method(G, N, X.shape[1], C, K, gram_given=gram is not None)
    if method == "direct":
        g = _per_domain_grads(P, Y1, design(X, bias), W)
        return (g - g.mean(dim=1, keepdim=True)).pow(2).sum(dim=(1, 2, 3))
    c = _centred(W)
    Tg = (feature_gram(X, bias) if gram is None else gram) * (c @ c.T)
    R = P - Y1
    TR = (Tg @ R.permute(1, 0, 2).reshape(N, G * C)).reshape(N, G, C).permute(1, 0, 2)
    return (TR * R).sum(dim=(1, 2))


def gradient_variance(theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor, domains: torch.Tensor,
                      normalize: Normalize = None, num_domains: int | None = None, *,
                      method: GradMethod = "auto", gram: torch.Tensor | None = None,
                      check: bool = True, bias: bool = True) -> torch.Tensor:
    """R_g = (1/K') Σ_e ‖G_e − Ḡ‖²_F over present domains; scalar, or (G,) for a grid.

    ``gram``: a precomputed ``feature_gram(X, bias)`` for the kernel form. ``bias=False``:
    theta is ``(C, d)``, a head without a bias column (derivatives w.r.t. its weights alone).
    """
    _check_choice("method", method, GRAD_METHODS)
    _check_choice("normalize", normalize, NORMALIZE_OPTIONS)
    if check:
        _validate(theta, X, y, domains, num_domains, gram=gram, bias=bias)
    th, single = _as_grid(theta)
    W, _ = _weights(domains, th.dtype)
    K = W.shape[1]
    if K < 2:
        return _finish(_zero(th), single)
    P = softmax(_logits(th, X, bias))
    Y1 = torch.nn.functional.one_hot(y, th.shape[1]).to(th.dtype)
    out = _gradient_from_probs(P, Y1, X, W, method, gram, bias) / K
    return _finish(out * _scale(normalize, X.shape[1], th.shape[1]) ** 2, single)
