"""Hessian-vector products and Hessian diagonals per domain, in closed form (docs/cma-math.md).

For any ``C×d̃`` matrix ``V``, ``H_e vec(V) = vec((1/n_e) Σ_{i∈e} (A_i V x̃_i) x̃_iᵀ)`` with
``A_i u = p_i ∘ u − p_i (p_i·u)``: ``O(n_e C d̃)`` per domain and head, no double
backward. These serve HGP (each domain's own ``H_e G_e``) and the Hutchinson
estimate of each domain's Hessian diagonal (``H_e z`` for Rademacher probes ``z``),
and the exact diagonal ``(1/n_e) Σ p_ic (1 − p_ic) x̃_ia²`` it estimates.

Shapes follow ``probe.moments``: ``P`` is ``(G, N, C)``, ``Xt = augment(X)`` is
``(N, d̃)``, ``W = domain_weights(domains)`` is ``(N, K')``; results are per present
domain, ``(G, K', C, d̃)``. Inputs are not validated (callers did).
"""

from __future__ import annotations

from base.lazy import lazy_import
from probe.moments.basics import domain_rows

torch = lazy_import("torch")

#: Hutchinson probes are processed in chunks whose per-chunk products fit in this many bytes
PROBE_CHUNK_BYTES = 64 * 1024**2


def hessian_vector_products(P: torch.Tensor, Xt: torch.Tensor, domains: torch.Tensor,
                            V: torch.Tensor) -> torch.Tensor:
    """``H_e V_e`` for every present domain e, ``V`` ``(G, K', C, d̃)`` one matrix per domain."""
    out = []
    for k, (rows, n) in enumerate(domain_rows(domains)):
        Xe, Pe = Xt[rows], P[:, rows]
        PU = Pe * torch.einsum("gcd,nd->gnc", V[:, k], Xe)  # p_i ∘ (V_e x̃_i)
        AU = PU - Pe * PU.sum(-1, keepdim=True)
        out.append(torch.einsum("gnc,nd->gcd", AU, Xe) / n)
    return torch.stack(out, dim=1)


def exact_hessian_diagonals(P: torch.Tensor, Xt: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """diag(H_e) as ``(G, K', C, d̃)``: ``Σ_i W_ie p_ic (1 − p_ic) x̃_ia²``."""
    return torch.einsum("nk,gnc,na->gkca", W, P * (1 - P), Xt * Xt)


def hutchinson_diagonals(P: torch.Tensor, Xt: torch.Tensor, W: torch.Tensor, probes: torch.Tensor) -> torch.Tensor:
    """The Hutchinson estimate ``(1/R) Σ_r z_r ∘ (H_e z_r)`` of each diag(H_e), ``(G, K', C, d̃)``,
    from probes ``(R, C, d̃)`` shared by every domain and head (so a domain's estimate
    does not depend on which heads are fitted beside it)."""
    G, N, C = P.shape
    K, d1, R = W.shape[1], Xt.shape[1], probes.shape[0]
    per_probe = G * (N * C + K * C * d1) * P.element_size()
    chunk = max(1, int(PROBE_CHUNK_BYTES // max(1, per_probe)))
    total = P.new_zeros(G, K, C, d1)
    for r0 in range(0, R, chunk):
        Z = probes[r0:r0 + chunk]
        PU = P.unsqueeze(1) * torch.einsum("rcd,nd->rnc", Z, Xt).unsqueeze(0)  # (G, r, N, C)
        AU = PU - P.unsqueeze(1) * PU.sum(-1, keepdim=True)
        HZ = torch.einsum("nk,grnc,nd->grkcd", W, AU, Xt)
        total = total + (Z.unsqueeze(0).unsqueeze(2) * HZ).sum(1)
    return total / R


def rademacher(shape: tuple[int, ...], seed: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """±1 probes drawn on the CPU from ``seed`` (the same on every device)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 2, shape, generator=g) * 2 - 1).to(dtype=dtype, device=device)


def domain_variance(D: torch.Tensor) -> torch.Tensor:
    """``(1/K') Σ_e ‖D_e − D̄‖²`` over the domain axis 1 of ``(G, K', ...)``; zero (still
    attached to the graph) below two domains."""
    if D.shape[1] < 2:
        return D.sum(dim=tuple(range(1, D.dim()))) * 0
    dev = D - D.mean(dim=1, keepdim=True)
    return dev.pow(2).sum(dim=tuple(range(2, D.dim()))).mean(dim=1)
