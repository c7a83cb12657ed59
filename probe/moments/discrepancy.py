"""The transfer bound's own terms: per-domain losses and the pairwise distances across
domains of the gradient, Hessian and third derivative of the mean cross-entropy,
``‖∇ⁿL_e − ∇ⁿL_f‖_F`` for n = 1, 2, 3, exact, without forming a Hessian or a third
derivative.

* n = 1: the per-domain gradients ``G_e`` (``C × d̃``) directly, ``O(N C d̃)``.
* n = 2, 3: the domain Gram matrices ``Γⁿ_ef = <∇ⁿL_e, ∇ⁿL_f>_F = Σ_{i∈e, j∈f}
  κₙ(i, j) (x̃_i·x̃_j)ⁿ / (n_e n_f)`` (``κₙ`` the cumulant kernels of
  ``probe.moments.cumulants``), so ``‖∇ⁿL_e − ∇ⁿL_f‖² = Γ_ee + Γ_ff − 2Γ_ef``.
  Accumulated over pairs of row blocks (``block_rows``); one Gram block serves every
  head and both orders. Up to ``FEATURE_CLASSES`` classes ``κₙ(i, j)`` is a dot product
  of per-row cumulant features (``M`` of them), so a block pair costs one matmul
  ``gⁿ @ [b × G·K'·M]`` for the whole grid: ``O(N² (d̃ + G K' M))``; beyond, the
  polynomial kernels per head, ``O(N² G C)`` with a few passes over each ``b × b``
  block. Memory ``O(block_rows² + G N C)``, and ``O(G N K' M)`` for the features.

Values only (no autograd graph). For figures meant to be read, pass a float64 head:
the distances are differences of large Gram entries, so every kernel, power and sum
runs in theta's dtype. ``X`` may stay float32: each row block is cast for the per-row
terms, and the Gram blocks ``X̃_I X̃_Jᵀ`` (the ``O(N² d)`` part) are float32 matmuls;
that rounds each distance by ~1e-8 relative (measured at d = 768) for 2–4× less time
on a CPU.
"""

from __future__ import annotations

from typing import NamedTuple

from base.lazy import lazy_import
from probe.moments.basics import _logits, _weights, design, log_softmax
from probe.moments.checks import _as_grid, _validate
from probe.moments.cumulants import cumulant_features, cumulant_kernels

torch = lazy_import("torch")

#: rows per block of the pairwise sums on a CPU: a (b × b) float64 block of 512 KB stays in
#: a core's L2 cache through the dozen passes the kernels make over it (1024 rows were 2-4×
#: slower); on a GPU, whose allocator caches and whose kernels want work, larger blocks
BLOCK_ROWS = 256
BLOCK_ROWS_CUDA = 2048
#: the cumulant features of every head (weighted per domain, with their running sums) are
#: kept only while they take at most twice this, and on a GPU the (b × b) kernel blocks
#: are built for at most this many bytes of heads at a time
KERNEL_CHUNK_BYTES = 256 * 1024**2
#: the same budget on a CPU: one head per chunk at the default block (heads side by side
#: would leave the cache)
KERNEL_BLOCK_BYTES = 512 * 1024
#: up to this many classes the cumulant kernels go through their features (one matmul per
#: block pair for every head; C = 8 has 36 + 120 of them), beyond it through the polynomial
FEATURE_CLASSES = 8


class DomainDiscrepancies(NamedTuple):
    """What ``domain_discrepancies`` returns (one head: no leading G axis)."""

    losses: torch.Tensor  # (G, K') mean cross-entropy per present domain
    distances: torch.Tensor  # (G, 3, K', K') ‖∇ⁿL_e − ∇ⁿL_f‖_F, n = 1, 2, 3
    domain_ids: torch.Tensor  # (K',) int64 ids of the present domains

    def largest(self) -> torch.Tensor:
        """(G, 3) the largest distance over pairs of domains, per order (zero below two domains)."""
        return self.distances.flatten(-2).amax(-1) if self.distances.shape[-1] else self.distances.sum((-1, -2))


def _first_order(th: torch.Tensor, X: torch.Tensor, y: torch.Tensor, W: torch.Tensor, blocks: list[slice],
                 bias: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(losses (G, K'), gradients (G, K', C, d̃), probabilities (G, N, C)) over row blocks."""
    G, C, d1 = th.shape
    K, N = W.shape[1], X.shape[0]
    losses = th.new_zeros(G, K)
    grads = th.new_zeros(G, K, C, d1)
    P = th.new_empty(G, N, C)
    for rows in blocks:
        Xb = X[rows].to(th.dtype)
        z = _logits(th, Xb, bias)
        logp = log_softmax(z)
        yb = y[rows]
        nll = -logp.gather(-1, yb.view(1, -1, 1).expand(G, -1, 1)).squeeze(-1)
        losses += nll @ W[rows]
        P[:, rows] = p = logp.exp()
        R = p - torch.nn.functional.one_hot(yb, C).to(p.dtype)
        grads += torch.einsum("nk,gnc,nd->gkcd", W[rows], R, design(Xb, bias))
    return losses, grads, P


class _FeatureSums:
    """Γ² and Γ³ from the cumulant features (few classes): ``κₙ(i, j) = fᵢ·fⱼ``, so
    ``Γⁿ = Aₙᵀ (gⁿ) Aₙ`` with ``Aₙ = W ∘ Fₙ`` (N × G·K'·M, every head and domain side by
    side). A block pair I ≤ J adds ``gⁿ_IJ Aₙ[J]`` to the running sums of the rows I,
    those of diagonal pairs apart: Γ is then the diagonal pairs' ``AᵀR`` plus the others'
    and its transpose (they stand for (i, j) and (j, i)), contracted once at the end
    instead of at every pair."""

    def __init__(self, F: dict[int, torch.Tensor], W: torch.Tensor) -> None:
        N, K = W.shape
        self.shape = {n: (N, f.shape[0], K, f.shape[-1]) for n, f in F.items()}
        self.A = {n: (W.view(N, 1, K, 1) * f.transpose(0, 1).unsqueeze(2)).reshape(N, -1) for n, f in F.items()}
        self.off = {n: torch.zeros_like(a) for n, a in self.A.items()}
        self.diag = {n: torch.zeros_like(a) for n, a in self.A.items()}

    def add(self, bi: slice, bj: slice, g: torch.Tensor) -> None:
        sums, power = self.diag if bi == bj else self.off, g * g
        for n in (2, 3):
            if n == 3:
                power = power.mul_(g)
            sums[n][bi].addmm_(power, self.A[n][bj])

    def gamma(self) -> torch.Tensor:
        """(G, 2, K', K')."""
        out = []
        for n in (2, 3):
            A = self.A[n].view(self.shape[n])
            off = torch.einsum("igkm,iglm->gkl", A, self.off[n].view(self.shape[n]))
            out.append(torch.einsum("igkm,iglm->gkl", A, self.diag[n].view(self.shape[n])) + off + off.mT)
        return torch.stack(out, dim=1)


def _kernel_gram(Pi: torch.Tensor, Pj: torch.Tensor, g: torch.Tensor, Wi: torch.Tensor, Wj: torch.Tensor
                 ) -> torch.Tensor:
    """(G, 2, K', K'): the block's share of Γ² and Γ³, ``Wᵢᵀ (κₙ ∘ gⁿ) Wⱼ`` per head (many
    classes: the kernels as polynomials of products of P, heads in chunks)."""
    G, K = Pi.shape[0], Wi.shape[1]
    powers = {2: g * g}
    powers[3] = powers[2] * g
    per_head = Pi.shape[1] * Pj.shape[1] * Pi.element_size()
    chunk = max(1, int((KERNEL_CHUNK_BYTES if Pi.is_cuda else KERNEL_BLOCK_BYTES) // per_head))
    res = Pi.new_empty(G, 2, K, K)
    for g0 in range(0, G, chunk):
        kappa = cumulant_kernels(Pi[g0:g0 + chunk], Pj[g0:g0 + chunk])
        for a, n in enumerate((2, 3)):
            res[g0:g0 + chunk, a] = torch.einsum("ik,gij,jl->gkl", Wi, kappa[n].mul_(powers[n]), Wj)
    return res


def _use_features(G: int, N: int, K: int, C: int, itemsize: int) -> bool:
    """Cumulant features when they are few (C ≤ FEATURE_CLASSES) and, weighted per domain
    with their two running sums (``_FeatureSums``), fit the chunk budget."""
    m = C * (C + 1) // 2 + C * (C + 1) * (C + 2) // 6 if C > 2 else 2
    return C <= FEATURE_CLASSES and 3 * G * N * K * m * itemsize <= 2 * KERNEL_CHUNK_BYTES


def _distances_from_gram(gamma: torch.Tensor) -> torch.Tensor:
    """‖a_e − a_f‖ from Γ_ef = <a_e, a_f> over the last two axes."""
    diag = gamma.diagonal(dim1=-2, dim2=-1)
    sq = diag.unsqueeze(-1) + diag.unsqueeze(-2) - 2 * gamma
    sq.diagonal(dim1=-2, dim2=-1).zero_()  # exactly, not a rounding error's square root
    return sq.clamp_min(0).sqrt()


def domain_discrepancies(theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor, domains: torch.Tensor,
                         num_domains: int | None = None, *, gram: torch.Tensor | None = None,
                         block_rows: int | None = None, check: bool = True, bias: bool = True
                         ) -> DomainDiscrepancies:
    """Per-domain mean CE and the pairwise distances ``‖∇ⁿL_e − ∇ⁿL_f‖_F`` (n = 1, 2, 3)
    of every pair of present domains, for one head ``(C, d+1)`` or a grid ``(G, C, d+1)``.

    ``X`` may have a lower floating dtype than ``theta`` (module docstring). ``gram``: a
    precomputed ``feature_gram(X, bias)`` (N×N, X's dtype), read block by block.
    ``bias=False``: the head is ``(C, d)`` with no bias column (``x̃ = x``). ``block_rows``:
    rows per block of the pairwise sums (None: BLOCK_ROWS, BLOCK_ROWS_CUDA on a GPU).
    """
    if check:
        _validate(theta, X, y, domains, num_domains, gram=gram, same_dtype=False, bias=bias)
    if block_rows is None:
        block_rows = BLOCK_ROWS_CUDA if X.is_cuda else BLOCK_ROWS
    if isinstance(block_rows, bool) or not isinstance(block_rows, int) or block_rows < 1:
        raise ValueError(f"`block_rows` must be a positive int, got {block_rows!r}")
    th, single = _as_grid(theta)
    W, ids = _weights(domains, th.dtype)
    N = X.shape[0]
    blocks = [slice(i, min(i + block_rows, N)) for i in range(0, N, block_rows)]
    with torch.no_grad():
        losses, grads, P = _first_order(th, X, y, W, blocks, bias)
        G, K = th.shape[0], W.shape[1]
        sums = _FeatureSums({n: cumulant_features(P, n) for n in (2, 3)}, W) \
            if _use_features(G, N, K, th.shape[1], 8) else None
        gamma = th.new_zeros(G, 2, K, K)
        for a, bi in enumerate(blocks):
            for bj in blocks[a:]:
                g = (gram[bi, bj] if gram is not None else X[bi] @ X[bj].T + float(bias)).to(th.dtype)
                if sums is not None:
                    sums.add(bi, bj, g)
                    continue
                part = _kernel_gram(P[:, bi], P[:, bj], g, W[bi], W[bj])
                # Γ is symmetric: an off-diagonal block pair stands for (i, j) and (j, i)
                gamma += part if bi == bj else part + part.transpose(-1, -2)
        if sums is not None:
            gamma = sums.gamma()
        flat = grads.flatten(2)
        first = (flat.unsqueeze(2) - flat.unsqueeze(1)).pow(2).sum(-1).sqrt()
        dist = torch.cat([first.unsqueeze(1), _distances_from_gram(gamma)], dim=1)
    if single:
        return DomainDiscrepancies(losses[0], dist[0], ids)
    return DomainDiscrepancies(losses, dist, ids)
