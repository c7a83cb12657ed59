"""Inner products of the logit cumulants of two rows, as polynomials of a few products of P.

The derivatives of one row's cross-entropy w.r.t. its logits are the cumulants of the
one-hot ``e ~ Cat(p)``: ``A(p) = diag(p) − ppᵀ`` (second) and ``κ₃(p) = E[(e − p)^{⊗3}]``
(third). Every kernel form in this package needs their inner products over pairs of
rows ``(i, j)``. With ``p = p_i``, ``q = p_j`` and the products

    s = p·q,   m2 = p·q²,   n2 = p²·q,   m3 = p·q³,   n3 = p³·q,   t = p²·q²

(powers elementwise), expanding ``Σ_ab p_a q_b ((e_a − p)·(e_b − q))^n`` with
``(e_a − p)·(e_b − q) = δ_ab + w_ab``, ``w_ab = s − q_a − p_b`` (so
``u³ = w³ + δ_ab (1 + 3w + 3w²)``; the weights ``p_a q_b`` factorise over a and b)
gives

    <A_i, A_j>     = s − m2 − n2 + s²
    <κ₃_i, κ₃_j>   = s + 3s² + 4s³ − 3(1 + 2s)(m2 + n2) + 2(m3 + n3) + 6t

Two classes: ``A = q₂ J`` with ``q₂ = p₀p₁``, ``‖J‖² = 4``, and ``κ₃ = q₃ v^{⊗3}`` with
``v = (1, −1)``, ``q₃ = p₀p₁(p₁ − p₀)``, ``‖v^{⊗3}‖² = 8``: both kernels are rank one.

Blocks here are ``(G, b_i, C)`` × ``(G, b_j, C)`` → ``(G, b_i, b_j)``: the forward pass
of the bound figures and the autograd paths; the trainer's penalties use the
memory-lean forms in ``hessian`` and ``third``, which never keep such a block.
"""

from __future__ import annotations

from base.lazy import lazy_import

torch = lazy_import("torch")

#: ‖J‖²_F and ‖v^{⊗3}‖²_F of the two-class factorisations above
BINARY_NORM2 = {2: 4.0, 3: 8.0}


def binary_factor(P: torch.Tensor, order: int) -> torch.Tensor:
    """``q₂ = p₀p₁`` (order 2) or ``q₃ = p₀p₁(p₁ − p₀)`` (order 3) of two-class ``P`` (…, N, 2)."""
    q = P[..., 0] * P[..., 1]
    return q if order == 2 else q * (P[..., 1] - P[..., 0])


def cumulant_kernels(Pi: torch.Tensor, Pj: torch.Tensor, orders: tuple[int, ...] = (2, 3)
                     ) -> dict[int, torch.Tensor]:
    """``{n: (G, b_i, b_j)}`` inner products of the n-th logit cumulants of rows of ``Pi``
    and ``Pj`` (both ``(G, b, C)``), for n in ``orders`` (2 and/or 3)."""
    s, m2n2, m3n3, t = _products(Pi, Pj, 3 in orders)
    differentiable = torch.is_grad_enabled() and (Pi.requires_grad or Pj.requires_grad)
    out = {}
    if not differentiable:
        # the same polynomials, evaluated in place: a (b × b) block is a few hundred KB, and
        # every out-of-place term is a fresh allocation of that size, which on a CPU costs
        # more than the arithmetic (5× on the bound figures' blocks)
        if 2 in orders:
            out[2] = torch.addcmul(s, s, s).sub_(m2n2)
        if 3 in orders:
            k3 = torch.mul(s, 4).add_(3).mul_(s).add_(1).mul_(s)
            k3.sub_(torch.mul(s, 2).add_(1).mul_(m2n2), alpha=3)
            out[3] = k3.add_(m3n3, alpha=2).add_(t, alpha=6)
        return out
    if 2 in orders:
        out[2] = s - m2n2 + s * s
    if 3 in orders:
        out[3] = s * (1 + s * (3 + 4 * s)) - 3 * (1 + 2 * s) * m2n2 + 2 * m3n3 + 6 * t
    return out


def _products(Pi: torch.Tensor, Pj: torch.Tensor, third: bool) -> tuple[torch.Tensor | None, ...]:
    """``s``, ``m2 + n2`` and, for the third order, ``m3 + n3`` and ``t`` (module docstring):
    each sum of two products is one product of concatenations."""
    def mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a @ b.transpose(-1, -2)

    Pi2, Pj2 = Pi * Pi, Pj * Pj
    s, m2n2 = mm(Pi, Pj), mm(torch.cat([Pi, Pi2], -1), torch.cat([Pj2, Pj], -1))
    if not third:
        return s, m2n2, None, None
    return s, m2n2, mm(torch.cat([Pi, Pi2 * Pi], -1), torch.cat([Pj2 * Pj, Pj], -1)), mm(Pi2, Pj2)


def cumulant_features(P: torch.Tensor, order: int) -> torch.Tensor:
    """``(…, N, M)`` per-row vectors whose dot products are the order-n cumulant kernel,
    ``<f_i, f_j> = <A_i, A_j>`` (order 2) or ``<κ₃_i, κ₃_j>`` (order 3): the distinct entries
    of the symmetric cumulant, each times the square root of how often it occurs. M is
    ``C(C+1)/2`` or ``C(C+1)(C+2)/6`` (one for two classes: the rank-one factor): for
    few classes, one matmul per pair of row blocks then serves every head."""
    C = P.shape[-1]
    if C == 2:
        return (BINARY_NORM2[order] ** 0.5 * binary_factor(P, order)).unsqueeze(-1)
    idx = torch.combinations(torch.arange(C, device=P.device), r=order, with_replacement=True)  # (M, n)
    distinct = torch.tensor([len(set(row)) for row in idx.tolist()], device=P.device)
    mult = {2: {1: 1.0, 2: 2.0}, 3: {1: 1.0, 2: 3.0, 3: 6.0}}[order]
    scale = torch.tensor([mult[int(k)] for k in distinct.tolist()], dtype=P.dtype, device=P.device).sqrt()
    if order == 2:
        A = torch.diag_embed(P) - P.unsqueeze(-1) * P.unsqueeze(-2)
        return A[..., idx[:, 0], idx[:, 1]] * scale
    return third_cumulants(P)[..., idx[:, 0], idx[:, 1], idx[:, 2]] * scale


def third_cumulants(P: torch.Tensor) -> torch.Tensor:
    """``κ₃(p)`` formed explicitly, ``(…, C, C, C)``: ``Σ_k p_k (e_k − p)^{⊗3}`` (references only)."""
    C = P.shape[-1]
    dev = torch.eye(C, dtype=P.dtype, device=P.device) - P.unsqueeze(-2)  # (…, k, a): e_k − p
    return torch.einsum("...k,...ka,...kb,...kc->...abc", P, dev, dev, dev)
