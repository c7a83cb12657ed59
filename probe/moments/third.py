"""The third-order variance R₃: the domain variance of the third derivative of the mean
cross-entropy w.r.t. the flattened head, exact, in the kernel form of the Hessian term.

Per sample ``∇³_Θ ℓ_i = κ₃(p_i) ⊗ x̃_i^{⊗3}`` (``κ₃`` the third logit cumulant,
``probe.moments.cumulants``), so with the centred domain weights ``c`` of the Hessian
term, ``K'·R₃ = <κ₃-kernel, T₃>`` with ``T₃ = (X̃X̃ᵀ)^{∘3} ∘ (c cᵀ)``: the same ``N×N``
structure with cubes in place of squares. Forms:

* ``"direct"``: forms every ``D_e`` (``C³·d̃³`` per domain and head). Reference only.
* ``"kernel"``: two classes: ``κ₃ = q₃ v^{⊗3}``, so ``K'·R₃ = 8 q₃ᵀ T₃ q₃`` (one matmul
  for the grid). More classes: the kernel ``s + 3s² + 4s³ − 3(1+2s)(m2+n2) + 2(m3+n3) + 6t``
  splits into a part linear in the products of P, ``<T₃, s + 6t − 6·m2 + 4·m3>`` (T₃
  symmetric), which is ``Σ (T₃P)∘P + 6 (T₃P²)∘P² − 6 (T₃P²)∘P + 4 (T₃P³)∘P``: one matmul
  ``T₃ @ [N × 3·G·C]`` for the whole grid; and a part ``3<T₃, s²> + 4<T₃, s³> −
  12<T₃, s∘m2>`` that needs each head's ``s = PPᵀ`` and ``m2 = P(P²)ᵀ``: five (seven with
  the backward) ``N×N×C`` products per head, ``O(N² C)``. A hand-written backward keeps
  only ``(G, N, C)`` products, never an ``N×N`` per head (heads chunked by
  ``CHUNK_BYTES``), so memory is ``O(N² + G N C)`` for any C. Once differentiable; if
  ``X`` requires grad, a plain autograd version is used so gradients reach ``X``.
* ``"auto"``: kernel unless direct is both cheaper and within ``AUTO_MEMORY_BUDGET``.
"""

from __future__ import annotations

import functools
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
    feature_gram,
    softmax,
)
from probe.moments.checks import _as_grid, _check_choice, _validate
from probe.moments.cumulants import BINARY_NORM2, binary_factor, cumulant_kernels, third_cumulants
from probe.moments.hessian import AUTO_MEMORY_BUDGET

torch = lazy_import("torch")

ThirdMethod = Literal["auto", "direct", "kernel"]
THIRD_METHODS: tuple[str, ...] = ("auto", "direct", "kernel")
#: heads are processed in chunks whose N×N intermediates (five per head) fit in this many bytes
CHUNK_BYTES = 16 * 1024**2


def third_order_costs(G: int, N: int, d: int, C: int, K: int, *, gram_given: bool = False,
                      itemsize: int = 4) -> dict[str, tuple[float, float]]:
    """Estimated (flops, peak bytes) of value + backward of ``third_order_variance`` per
    method, excluding the logits. ``d`` excludes the bias column."""
    d1, n2, b = d + 1, float(N) * N, float(itemsize)
    const = (0.0 if gram_given else 2.0 * n2 * d1) + 2.0 * n2 * (K + 3)
    if C == 2:
        head, mem = 4.0 * n2 * G, 4.0 * G * N
    else:
        chunk = max(1, min(G, int(CHUNK_BYTES // (5 * n2 * b))))
        head, mem = G * (20.0 * n2 * C + 20.0 * n2), 5.0 * chunk * n2 + 12.0 * G * N * C
    out = {"kernel": (const + head, b * (3.0 * n2 + mem))}
    c3, x3 = float(C) ** 3, float(d1) ** 3
    out["direct"] = (6.0 * G * K * N * c3 * x3, b * (2.0 * G * K * c3 * x3 + G * N * c3 + N * x3))
    return out


def choose_third_method(G: int, N: int, d: int, C: int, K: int, *, gram_given: bool = False,
                        itemsize: int = 4, budget: float = AUTO_MEMORY_BUDGET) -> str:
    """The method ``"auto"`` uses: direct only when it is cheaper and fits ``budget``."""
    costs = third_order_costs(G, N, d, C, K, gram_given=gram_given, itemsize=itemsize)
    direct = costs["direct"]
    return "direct" if direct[1] <= budget and direct[0] < costs["kernel"][0] else "kernel"


def _third_direct(P: torch.Tensor, Xt: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """K'·R₃ per head from explicitly formed per-domain third derivatives (reference)."""
    G, N, C = P.shape
    d1 = Xt.shape[1]
    kap = third_cumulants(P).reshape(G, N, C**3)
    x3 = torch.einsum("na,nb,nc->nabc", Xt, Xt, Xt).reshape(N, d1**3)
    D = torch.einsum("nk,gnz,nx->gkzx", _centred(W), kap, x3)  # D_e − D̄
    return D.pow(2).sum(dim=(1, 2, 3))


def _linear_part(P: torch.Tensor, TP: torch.Tensor, TP2: torch.Tensor, TP3: torch.Tensor) -> torch.Tensor:
    """<T₃, s + 6t − 6·m2 + 4·m3> per head from the products T₃P^k (module docstring)."""
    P2 = P * P
    return (TP * P + 6 * TP2 * P2 - 6 * TP2 * P + 4 * TP3 * P).sum(dim=(1, 2))


def _power_products(P: torch.Tensor, T: torch.Tensor) -> list[torch.Tensor]:
    """[T P, T P², T P³], each (G, N, C), from one (N, N) × (N, 3·G·C) matmul."""
    G, N, C = P.shape
    Pf = P.permute(1, 0, 2).reshape(N, G * C)
    TPs = T @ torch.cat([Pf, Pf * Pf, Pf * Pf * Pf], dim=1)
    return [t.reshape(N, G, C).permute(1, 0, 2) for t in TPs.split(G * C, dim=1)]


@functools.cache
def _third_kernel() -> type:
    """The autograd Function below, defined at first use (importing this module imports no torch)."""
    from torch.autograd.function import once_differentiable

    class ThirdKernel(torch.autograd.Function):
        """K'·R₃ for C > 2 with a hand-written backward (module docstring).

        Nonlinear part, with ``u = T∘s``, ``u₂ = u∘s``, ``v = T∘m2`` per head:
        ``3 Σ(uP)∘P + 4 Σ(u₂P)∘P − 12 Σ(uP²)∘P``; its gradient w.r.t. P is
        ``12uP + 24u₂P − 12((v + vᵀ)P + uP² + 2P∘(uP))``. Only those (G, N, C) products
        are kept for the backward.
        """

        @staticmethod
        def forward(ctx, P: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
            G, N, C = P.shape
            grad = ctx.needs_input_grad[0]
            TP, TP2, TP3 = _power_products(P, T)
            UP, UP2, U2P = torch.empty_like(P), torch.empty_like(P), torch.empty_like(P)
            VV = torch.empty_like(P) if grad else None
            chunk = max(1, int(CHUNK_BYTES // (5 * N * N * P.element_size())))
            for g0 in range(0, G, chunk):
                sl = slice(g0, g0 + chunk)
                Pc = P[sl]
                P2c = Pc * Pc
                s = Pc @ Pc.transpose(1, 2)
                u = s * T
                UP[sl], UP2[sl] = (u @ torch.cat([Pc, P2c], dim=2)).split(C, dim=2)
                U2P[sl] = u.mul_(s) @ Pc  # u₂ = u∘s; u itself is no longer needed
                if grad:
                    v = (Pc @ P2c.transpose(1, 2)).mul_(T)
                    VV[sl] = torch.add(v, v.transpose(1, 2), out=s) @ Pc
            quad = ((3 * UP + 4 * U2P - 12 * UP2) * P).sum(dim=(1, 2))
            if grad:
                ctx.save_for_backward(P, TP, TP2, TP3, UP, UP2, U2P, VV)
            return _linear_part(P, TP, TP2, TP3) + quad

        @staticmethod
        @once_differentiable
        def backward(ctx, dout: torch.Tensor):
            P, TP, TP2, TP3, UP, UP2, U2P, VV = ctx.saved_tensors
            lin = 2 * TP + 24 * P * TP2 - 6 * TP2 - 12 * P * TP + 4 * TP3 + 12 * P * P * TP
            quad = 12 * UP + 24 * U2P - 12 * (VV + UP2 + 2 * P * UP)
            return dout.view(-1, 1, 1) * (lin + quad), None

    return ThirdKernel


def _third_kernel_autograd(P: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """Same value, plain autograd (differentiable w.r.t. T, i.e. X, too)."""
    return (cumulant_kernels(P, P, (3,))[3] * T).sum(dim=(1, 2))


def _third_from_probs(P: torch.Tensor, X: torch.Tensor, W: torch.Tensor, method: str,
                      gram: torch.Tensor | None, bias: bool = True) -> torch.Tensor:
    """K'·R₃ per head (unnormalised), K' = W.shape[1] ≥ 2."""
    G, N, C = P.shape
    if method == "auto":
        method = choose_third_method(G, N, X.shape[1], C, W.shape[1], gram_given=gram is not None,
                                     itemsize=P.element_size())
    if method == "direct":
        return _third_direct(P, design(X, bias), W)
    g = feature_gram(X, bias) if gram is None else gram
    c = _centred(W)
    T = g * g * g * (c @ c.T)
    if C == 2:
        q = binary_factor(P, 3)
        return BINARY_NORM2[3] * ((q @ T) * q).sum(dim=1)
    if T.requires_grad:
        return _third_kernel_autograd(P, T)
    return _third_kernel().apply(P, T)


def third_variance_from_logits(z: torch.Tensor, X: torch.Tensor, W: torch.Tensor, *,
                               method: ThirdMethod = "auto", gram: torch.Tensor | None = None,
                               bias: bool = True, probs: torch.Tensor | None = None) -> torch.Tensor:
    """R₃ ``(G,)`` (unnormalised) from a grid's logits ``z`` (G, N, C) on the rows ``X`` with
    domain weights ``W = domain_weights(domains)``: for a trainer that has the logits (and
    perhaps ``gram = feature_gram(X, bias)``). ``bias=False``: the head has no bias column
    (derivatives w.r.t. the weights only). Inputs are not validated."""
    K = W.shape[1]
    if K < 2:
        return z.sum(dim=(1, 2)) * 0  # zero, still attached to theta's graph
    return _third_from_probs(softmax(z) if probs is None else probs, X, W, method, gram, bias) / K


def third_order_variance(theta: torch.Tensor, X: torch.Tensor, domains: torch.Tensor,
                         normalize: Normalize = None, num_domains: int | None = None, *,
                         method: ThirdMethod = "auto", gram: torch.Tensor | None = None,
                         check: bool = True, bias: bool = True) -> torch.Tensor:
    """R₃ = (1/K') Σ_e ‖D_e − D̄‖² over present domains, ``D_e = (1/n_e) Σ_{i∈e} κ₃(p_i) ⊗ x̃_i^{⊗3}``
    the third derivative of domain e's mean cross-entropy w.r.t. the flattened head;
    scalar, or (G,) for a grid. Conventions as ``hessian_variance`` (``normalize="dC"``
    divides each ``D_e`` by d·C, ``bias=False`` a head without a bias column). ``gram``: a
    precomputed ``feature_gram(X, bias)``.
    """
    _check_choice("method", method, THIRD_METHODS)
    _check_choice("normalize", normalize, NORMALIZE_OPTIONS)
    if check:
        _validate(theta, X, None, domains, num_domains, gram=gram, bias=bias)
    th, single = _as_grid(theta)
    W, _ = _weights(domains, th.dtype)
    K = W.shape[1]
    if K < 2:
        return _finish(_zero(th), single)
    P = softmax(_logits(th, X, bias))
    out = _third_from_probs(P, X, W, method, gram, bias) / K
    return _finish(out * _scale(normalize, X.shape[1], th.shape[1]) ** 2, single)
