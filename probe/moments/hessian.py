"""The Hessian variance R_H in its exact forms (direct, kernel, binary) and the cost
model ``"auto"`` chooses by."""

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
    domain_rows,
    feature_kernel,
    softmax,
)
from probe.moments.checks import _as_grid, _check_choice, _validate

torch = lazy_import("torch")

Method = Literal["auto", "direct", "kernel", "binary"]
METHODS: tuple[str, ...] = ("auto", "direct", "kernel", "binary")
#: "auto" only picks a method whose estimated peak memory fits in this many bytes.
AUTO_MEMORY_BUDGET = 2 * 1024**3
#: Large-C kernel variant: heads are processed in chunks whose N×N intermediate
#: fits in this many bytes (nothing N×N per head is kept for the backward pass).
#: Cache-sized chunks measured ~15% faster than one big batch at N = 512, C = 65.
ELEMENTWISE_CHUNK_BYTES = 4 * 1024**2


def _kernel_variant(C: int) -> str:
    """Which kernel sub-form is cheapest per head (see the module docstring)."""
    if C == 2:
        return "rank1"
    # columns: 4N²·C(C+1)/2 flops per head (forward + backward); elementwise:
    # 8N²C in matmuls plus a few passes over an N×N tensor.
    return "columns" if C * (C + 1) // 2 <= 2 * C + 1 else "elementwise"


def hessian_costs(G: int, N: int, d: int, C: int, K: int, *, kernel_given: bool = False,
                  itemsize: int = 4) -> dict[str, tuple[float, float]]:
    """Estimated (flops, peak bytes) of value + backward of ``hessian_variance`` per
    method, excluding the logits common to all. ``d`` excludes the bias column."""
    d1, n2 = d + 1, float(N) * N
    b = float(itemsize)
    out: dict[str, tuple[float, float]] = {}
    # kernel: S and T once for all heads, then the per-head part.
    const = (0.0 if kernel_given else 2.0 * n2 * d1) + 2.0 * n2 * (K + 2)
    variant = _kernel_variant(C)
    if variant == "rank1":
        head, mem = 4.0 * n2 * G, 4.0 * G * N
    elif variant == "columns":
        m = C * (C + 1) / 2
        head, mem = 4.0 * n2 * G * m + 6.0 * G * N * C * C, 4.0 * G * N * m
    else:
        chunk = max(1, min(G, int(ELEMENTWISE_CHUNK_BYTES // (n2 * b))))
        head, mem = G * (8.0 * n2 * C + 4.0 * n2), chunk * n2 + 6.0 * G * N * C
    out["kernel"] = (const + head, b * (3.0 * n2 + mem))
    if C == 2:
        # per-domain d̃×d̃ moments: N·d̃² per head, plus the K' differences.
        out["binary"] = (4.0 * G * N * d1 * d1 + 4.0 * G * K * d1 * d1,
                         b * (2.0 * G * K * d1 * d1 + G * N * d1))
    inter = min(float(N) * d1 * d1, float(G) * N * K * C * C * d1)
    out["direct"] = (4.0 * G * K * C * C * N * d1 * d1,
                     b * (2.0 * G * K * C * C * d1 * d1 + inter))
    return out


def choose_hessian_method(G: int, N: int, d: int, C: int, K: int, *, kernel_given: bool = False,
                          itemsize: int = 4, budget: float = AUTO_MEMORY_BUDGET) -> str:
    """The method ``"auto"`` uses: fewest flops among those within ``budget`` bytes,
    else the one with the least memory."""
    costs = hessian_costs(G, N, d, C, K, kernel_given=kernel_given, itemsize=itemsize)
    fits = {m: c for m, c in costs.items() if c[1] <= budget}
    if fits:
        return min(fits, key=lambda m: (fits[m][0], m != "kernel"))
    return min(costs, key=lambda m: costs[m][1])


def _hess_direct(P: torch.Tensor, Xt: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """K'·R_H per head from explicitly formed per-domain Hessians (reference)."""
    G, N, C = P.shape
    K, d1 = W.shape[1], Xt.shape[1]
    A = torch.diag_embed(P) - P.unsqueeze(-1) * P.unsqueeze(-2)  # (G, N, C, C)
    Z = W.T.reshape(1, K, N, 1) * A.reshape(G, 1, N, C * C)  # (G, K, N, C²)
    if N * d1 * d1 <= G * N * K * C * C * d1:
        XX = (Xt.unsqueeze(2) * Xt.unsqueeze(1)).reshape(N, d1 * d1)
        H = Z.transpose(-1, -2) @ XX  # (G, K, C², d̃²): H_e in (c, c', a, b) order
    else:
        Yz = Z.unsqueeze(-1) * Xt.reshape(1, 1, N, 1, d1)  # (G, K, N, C², d̃)
        H = torch.einsum("gknpa,nb->gkpab", Yz, Xt)
    D = H - H.mean(dim=1, keepdim=True)
    return D.pow(2).sum(dim=tuple(range(1, D.dim())))


def _hess_binary(P: torch.Tensor, Xt: torch.Tensor, domains: torch.Tensor) -> torch.Tensor:
    """K'·R_H for C = 2 from the d̃×d̃ moments M_e = (1/n_e) Σ_{i∈e} q_i x̃_i x̃_iᵀ."""
    q = P[..., 0] * P[..., 1]  # (G, N)
    Ms = []
    for rows, n in domain_rows(domains):
        Xe = Xt[rows]
        qe = q[:, rows] / n
        Ms.append((qe.unsqueeze(-1) * Xe).transpose(1, 2) @ Xe)  # (G, d̃, d̃)
    M = torch.stack(Ms, dim=1)
    D = M - M.mean(dim=1, keepdim=True)
    return 4 * D.pow(2).sum(dim=(1, 2, 3))


def _hess_columns(P: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """K'·R_H = Σ_{c≤c'} m_cc' a^{cc'}ᵀ T a^{cc'} with a^{cc'}_i = A_i[c,c']."""
    G, N, C = P.shape
    iu = torch.triu_indices(C, C, device=P.device)
    Pi, Pj = P[..., iu[0]], P[..., iu[1]]
    diag = (iu[0] == iu[1]).to(P.dtype)
    a = diag * Pi - Pi * Pj  # (G, N, M) entries of A_i on and above the diagonal
    m = 2 - diag  # off-diagonal entries appear twice in <A_i, A_j>_F
    flat = a.permute(1, 0, 2).reshape(N, -1)
    Ta = (T @ flat).reshape(N, G, -1).permute(1, 0, 2)
    return (Ta * a * m).sum(dim=(1, 2))


@functools.cache
def _elementwise_kernel() -> type:
    """The autograd Function below, defined at its first use so importing this module
    does not import torch."""
    from torch.autograd.function import once_differentiable

    class ElementwiseKernel(torch.autograd.Function):
        """K'·R_H = <κ_P, T> for many classes, with a hand-written backward.

        ``<κ_P, T> = Σ (P - 2P∘P)∘(TP) + <(PPᵀ)∘(PPᵀ), T>`` (T symmetric). The second
        term equals ``Σ P∘(uP)`` with ``u = (PPᵀ)∘T``, and its gradient is ``4uP``, so
        only the ``(G, N, C)`` product ``uP`` is kept: the ``N×N`` per-head tensor lives
        for one chunk of heads at a time, in the forward pass only.
        """

        @staticmethod
        def forward(ctx, P: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
            G, N, C = P.shape
            Pf = P.permute(1, 0, 2).reshape(N, G * C)
            grad = ctx.needs_input_grad[0]
            # T(P∘P) is only needed by the backward; one wider matmul is cheaper than two.
            TPs = T @ (torch.cat([Pf, Pf * Pf], dim=1) if grad else Pf)
            TP = TPs[:, : G * C]
            lin = ((Pf - 2 * Pf * Pf) * TP).reshape(N, G, C).sum(dim=(0, 2))
            U = torch.empty_like(P)
            chunk = max(1, int(ELEMENTWISE_CHUNK_BYTES // (N * N * P.element_size())))
            for g0 in range(0, G, chunk):
                Pc = P[g0:g0 + chunk]
                u = (Pc @ Pc.transpose(1, 2)).mul_(T)
                U[g0:g0 + chunk] = u @ Pc
            out = lin + (P * U).sum(dim=(1, 2))
            if grad:
                ctx.save_for_backward(P, TPs, U)
            return out

        @staticmethod
        @once_differentiable
        def backward(ctx, dout: torch.Tensor):
            P, TPs, U = ctx.saved_tensors
            G, N, C = P.shape
            TP, TP2 = (t.reshape(N, G, C).permute(1, 0, 2) for t in TPs.split(G * C, dim=1))
            dP = 2 * TP - 4 * P * TP - 2 * TP2 + 4 * U
            return dout.view(G, 1, 1) * dP, None

    return ElementwiseKernel


def _hess_elementwise_autograd(P: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """Same value as the elementwise kernel, differentiable w.r.t. T too (X requires grad)."""
    G, N, C = P.shape
    TP = (T @ P.permute(1, 0, 2).reshape(N, G * C)).reshape(N, G, C).permute(1, 0, 2)
    s = P @ P.transpose(1, 2)
    return ((P - 2 * P * P) * TP).sum(dim=(1, 2)) + (s.square() * T).sum(dim=(1, 2))


def _hess_kernel(P: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    variant = _kernel_variant(P.shape[-1])
    if variant == "rank1":
        q = P[..., 0] * P[..., 1]  # (G, N)
        return 4 * ((q @ T) * q).sum(dim=1)
    if variant == "columns":
        return _hess_columns(P, T)
    if T.requires_grad:
        return _hess_elementwise_autograd(P, T)
    return _elementwise_kernel().apply(P, T)


def _hessian_from_probs(P: torch.Tensor, X: torch.Tensor, domains: torch.Tensor, W: torch.Tensor,
                        method: str, kernel: torch.Tensor | None, gram: torch.Tensor | None,
                        bias: bool = True) -> torch.Tensor:
    """K'·R_H per head (unnormalised), K' = W.shape[1] ≥ 2."""
    G, N, C = P.shape
    K = W.shape[1]
    if method == "auto":
        method = choose_hessian_method(G, N, X.shape[1], C, K, kernel_given=kernel is not None or gram is not None,
                                       itemsize=P.element_size())
    if method == "binary":
        return _hess_binary(P, design(X, bias), domains)
    if method == "direct":
        return _hess_direct(P, design(X, bias), W)
    S = kernel if kernel is not None else feature_kernel(X, gram, bias)
    c = _centred(W)
    T = S * (c @ c.T)
    return _hess_kernel(P, T)


def hessian_variance(theta: torch.Tensor, X: torch.Tensor, domains: torch.Tensor, method: Method = "auto",
                     normalize: Normalize = None, num_domains: int | None = None, *,
                     kernel: torch.Tensor | None = None, check: bool = True, bias: bool = True) -> torch.Tensor:
    """R_H = (1/K') Σ_e ‖H_e − H̄‖²_F over present domains; scalar, or (G,) for a grid.

    ``kernel``: a precomputed ``feature_kernel(X, bias=bias)`` (used by the kernel method,
    also by ``"auto"``'s cost estimate). ``check=False`` skips the input validation (it
    reads values back from the device) for callers that validated once already.
    ``bias=False``: theta is ``(C, d)``, a head without a bias column.
    """
    _check_choice("method", method, METHODS)
    _check_choice("normalize", normalize, NORMALIZE_OPTIONS)
    if check:
        _validate(theta, X, None, domains, num_domains, kernel=kernel, bias=bias)
    th, single = _as_grid(theta)
    C = th.shape[1]
    if method == "binary" and C != 2:
        raise ValueError(f"method='binary' needs C = 2 classes, theta has C = {C}")
    W, _ = _weights(domains, th.dtype)
    K = W.shape[1]
    if K < 2:
        return _finish(_zero(th), single)
    P = softmax(_logits(th, X, bias))
    out = _hessian_from_probs(P, X, domains, W, method, kernel, None, bias) / K
    return _finish(out * _scale(normalize, X.shape[1], C) ** 2, single)
