"""Both penalties from one logits pass: the call a trainer wants."""

from __future__ import annotations

from typing import NamedTuple

from base.lazy import lazy_import
from probe.moments.basics import (
    NORMALIZE_OPTIONS,
    Normalize,
    _finish,
    _logits,
    _scale,
    _weights,
    feature_gram,
    softmax,
)
from probe.moments.checks import _as_grid, _check_choice, _validate
from probe.moments.gradient import _gradient_from_probs, _losses, choose_gradient_method
from probe.moments.hessian import METHODS, Method, _hessian_from_probs, choose_hessian_method

torch = lazy_import("torch")


class Penalties(NamedTuple):
    """What ``penalty_terms`` returns (one head: no leading G axis)."""

    losses: torch.Tensor  # (G, K') mean cross-entropy per present domain
    grad_variance: torch.Tensor  # (G,) R_g
    hess_variance: torch.Tensor  # (G,) R_H
    domain_ids: torch.Tensor  # (K',) int64 ids of the present domains


def penalty_terms(theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor, domains: torch.Tensor,
                  normalize: Normalize = None, num_domains: int | None = None, *,
                  method: Method = "auto", gram: torch.Tensor | None = None,
                  check: bool = True, bias: bool = True) -> Penalties:
    """Per-domain mean CE losses, R_g and R_H from one logits pass.

    The Gram matrix ``X̃X̃ᵀ`` (computed here unless ``gram`` is given) serves both
    the gradient and the Hessian kernel forms. ``method`` applies to R_H; R_g uses
    its kernel form whenever the Gram matrix is available anyway. ``bias=False``: theta
    is ``(C, d)``, a head without a bias column (``gram`` then ``feature_gram(X, False)``).
    """
    _check_choice("method", method, METHODS)
    _check_choice("normalize", normalize, NORMALIZE_OPTIONS)
    if check:
        _validate(theta, X, y, domains, num_domains, gram=gram, bias=bias)
    th, single = _as_grid(theta)
    G, C, _ = th.shape
    N, d = X.shape
    if method == "binary" and C != 2:
        raise ValueError(f"method='binary' needs C = 2 classes, theta has C = {C}")
    W, ids = _weights(domains, th.dtype)
    z = _logits(th, X, bias)
    losses = _losses(z, y, W)
    rg, rh = variances_from_logits(z, X, y, domains, W, normalize=normalize, method=method, gram=gram, bias=bias)
    return Penalties(_finish(losses, single), _finish(rg, single), _finish(rh, single), ids)


def variances_from_logits(z: torch.Tensor, X: torch.Tensor, y: torch.Tensor, domains: torch.Tensor,
                          W: torch.Tensor, *, normalize: Normalize = None, method: Method = "auto",
                          gram: torch.Tensor | None = None, bias: bool = True,
                          probs: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(R_g, R_H), each ``(G,)``, from a grid's logits ``z`` (G, N, C) on the rows ``X``
    with domain weights ``W = domain_weights(domains)``: for a trainer that already has
    the logits (and perhaps their softmax, ``probs``). ``bias=False``: the head has no bias
    column (derivatives w.r.t. the weights only). Inputs are not validated (``penalty_terms``
    does that)."""
    G, N, C = z.shape
    d, K = X.shape[1], W.shape[1]
    if K < 2:
        zero = z.sum(dim=(1, 2)) * 0  # zero, still attached to theta's graph
        return zero, zero
    P = softmax(z) if probs is None else probs
    Y1 = torch.nn.functional.one_hot(y, C).to(z.dtype)
    hmethod = method
    if hmethod == "auto":
        hmethod = choose_hessian_method(G, N, d, C, K, kernel_given=gram is not None, itemsize=z.element_size())
    if gram is None and (hmethod == "kernel" or choose_gradient_method(G, N, d, C, K) == "kernel"):
        gram = feature_gram(X, bias)
    # the Gram matrix at hand makes the kernel form cheaper, not always cheapest: with fewer
    # columns than rows (PCA's 100 against a batch of 500) the direct form does a fifth of the work
    gmethod = choose_gradient_method(G, N, d, C, K, gram_given=gram is not None)
    s2 = _scale(normalize, d, C) ** 2
    rg = _gradient_from_probs(P, Y1, X, W, gmethod, gram, bias) * (s2 / K)
    rh = _hessian_from_probs(P, X, domains, W, hmethod, None, gram, bias) * (s2 / K)
    return rg, rh
