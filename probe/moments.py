"""Closed-form per-domain gradients and Hessians of a softmax linear head, and the
CMA penalties built from them (see docs/cma-math.md for the derivations).

Functional API in the style of ``torch.nn.functional``:

* ``theta`` is ``(C, d+1)`` for one head or ``(G, C, d+1)`` for a grid of G heads
  (last column: bias); ``X`` is ``(N, d)`` without the ones column; ``y`` and
  ``domains`` are int64 ``(N,)``, domains numbered ``0..K-1``.
* Results for one head drop the leading G axis; a grid returns one value per head.
* Only domains with rows in the batch count: ``K'`` is the number of *present*
  domains, ordered by id (``present_domains`` maps the K' columns back to ids).
  With fewer than two present domains both penalties are zero (still
  differentiable, with a zero gradient).
* Every function runs on the device and in the dtype of ``theta`` (float32 or
  float64, CPU or CUDA); no Python loop runs over samples.

Penalties (over the K' present domains, ``G_e`` and ``H_e`` the gradient and
Hessian of domain e's mean cross-entropy w.r.t. the flattened head, bias included):

    R_g = (1/K') sum_e ||G_e - mean_f G_f||_F^2      gradient_variance
    R_H = (1/K') sum_e ||H_e - mean_f H_f||_F^2      hessian_variance

Both are differentiable w.r.t. ``theta`` by one ordinary backward pass (no
double backward, no sampling). They are computed with *centred* domain weights:
``H_e - H̄ = sum_i c_ie A_i ⊗ x̃_i x̃_iᵀ`` with ``c_ie = [i in e]/n_e - (1/K') sum_f [i in f]/n_f``,
so no cancellation between large per-domain quantities happens.

``hessian_variance`` methods (all exact; they agree to rounding):

* ``"direct"``: forms every per-domain Hessian (Kronecker layout, ``C²·d̃²`` per
  domain and head) and takes the variance literally. Reference for small problems.
* ``"kernel"``: the ``N×N`` form. ``S = (X̃X̃ᵀ)∘(X̃X̃ᵀ)`` and ``T = S ∘ (c cᵀ)``
  depend on the features and domains only, so one ``T`` serves every head, and
  ``K'·R_H = <κ_P, T>`` with ``κ_P(i,j) = <A_i, A_j>_F``, ``A_i = diag(p_i) - p_i p_iᵀ``.
  Per head it then uses the cheapest of:
  ``C = 2``: ``A_i = q_i J`` (``q_i = p_i1 p_i2``, ``||J||² = 4``), so
  ``K'·R_H = 4 qᵀ T q``: one matmul ``T @ [N × G]`` for the whole grid;
  small ``C`` (``C = 3`` by the cost rule): ``κ_P`` expanded over the ``C(C+1)/2`` distinct entries of ``A``
  (off-diagonal ones weighted 2), one matmul ``T @ [N × G·C(C+1)/2]``;
  larger ``C``: ``<κ_P, T> = tr(PᵀTP) - 2 tr((P∘P)ᵀTP) + <(PPᵀ)∘(PPᵀ), T>``, i.e. one
  matmul ``T @ [N × 2·G·C]`` plus two ``N×N×C`` products per head (``O(G N² C)``),
  with a hand-written backward that keeps no per-head ``N×N`` tensor, so memory
  stays ``O(N² + G N C)`` (heads are chunked by ``ELEMENTWISE_CHUNK_BYTES``). That
  backward is once-differentiable (no double backward); if ``X`` itself requires
  grad, a plain autograd version is used instead so gradients reach ``X`` too.
  Pass ``kernel=feature_kernel(X)`` to reuse ``S`` across calls on the same rows.
* ``"binary"`` (``C = 2`` only): ``R_H = 4 (1/K') sum_e ||M_e - M̄||_F²`` with the
  ``d̃×d̃`` moments ``M_e = (1/n_e) sum_{i in e} q_i x̃_i x̃_iᵀ``; ``O(N d̃²)`` time, the
  choice when ``N >> d``.
* ``"auto"``: the method with the fewest estimated floating-point operations
  (forward plus backward, ``hessian_costs``) among those whose estimated peak
  memory fits in ``AUTO_MEMORY_BUDGET`` bytes; if none fits, the one with the
  smallest estimated memory. In practice: kernel when ``N ≲ d`` (and for any grid
  of small heads), binary when ``N >> d`` and ``C = 2``, direct only for tiny
  problems.

``gradient_variance`` has ``"direct"`` (per-domain gradients, ``O(G K' N C d̃)``)
and ``"kernel"`` (``K'·R_g = tr(Rᵀ T_g R)`` with ``R = P - Y`` and
``T_g = (X̃X̃ᵀ) ∘ (c cᵀ)``, ``O(N² (d̃ + G C))``), ``"auto"`` choosing by the same rule.
``penalty_terms`` returns the per-domain losses and both penalties from one
logits pass, sharing the Gram matrix between them: the call a trainer wants.

Normalisation (``normalize``):

* ``None`` (default): the definitions above.
* ``"dC"``: the authors' linear-probing scaling. Their linear-probing code
  (class ``HISRClassifier``, methods ``gradient``, ``hessian``, ``hessian_pen`` and
  the memory-efficient ``hessian_pen_mem`` variants, built on the ISR code base;
  read via the public code index, repository name not shown there) fits a head
  ``nn.Linear(d, C, bias=False)`` and divides each per-domain gradient
  ``(P-Y)ᵀX/n_e`` and each per-domain Hessian by ``d·C``, where ``d =
  x.shape[1]`` is the number of feature columns and ``C`` the number of classes;
  their penalties are then the same variances, so both penalties scale by
  ``1/(d·C)²``. Here ``"dC"`` divides ``G_e`` and ``H_e`` by ``d·C`` with
  ``d = X.shape[1]`` (the feature columns, *not* ``d+1``), so their published
  α, β grids keep their meaning. Differences that remain: our head has a bias,
  whose gradient row and Hessian block are included (the authors' head has none),
  and we average over present domains (their gradient penalty divides by the
  configured number of environments). Their full fine-tuning code uses other
  factors (``C`` for the Hessian, ``√C`` or ``C`` for the gradient, per
  docs/cma-math.md); those are not offered.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

Method = Literal["auto", "direct", "kernel", "binary"]
GradMethod = Literal["auto", "direct", "kernel"]
Normalize = Literal[None, "dC"]

METHODS: tuple[str, ...] = ("auto", "direct", "kernel", "binary")
GRAD_METHODS: tuple[str, ...] = ("auto", "direct", "kernel")
NORMALIZE_OPTIONS: tuple[str | None, ...] = (None, "dC")

#: "auto" only picks a method whose estimated peak memory fits in this many bytes.
AUTO_MEMORY_BUDGET = 2 * 1024**3
#: Large-C kernel variant: heads are processed in chunks whose N×N intermediate
#: fits in this many bytes (nothing N×N per head is kept for the backward pass).
#: Cache-sized chunks measured ~15% faster than one big batch at N = 512, C = 65.
ELEMENTWISE_CHUNK_BYTES = 4 * 1024**2


class Penalties(NamedTuple):
    """What ``penalty_terms`` returns (one head: no leading G axis)."""

    losses: torch.Tensor  # (G, K') mean cross-entropy per present domain
    grad_variance: torch.Tensor  # (G,) R_g
    hess_variance: torch.Tensor  # (G,) R_H
    domain_ids: torch.Tensor  # (K',) int64 ids of the present domains


# --------------------------------------------------------------------------- validation


def _as_grid(theta: torch.Tensor) -> tuple[torch.Tensor, bool]:
    if theta.dim() == 2:
        return theta.unsqueeze(0), True
    if theta.dim() == 3:
        return theta, False
    raise ValueError(f"theta must have shape (C, d+1) or (G, C, d+1), got {tuple(theta.shape)}")


def _all_finite(t: torch.Tensor) -> bool:
    # One float64 reduction is much cheaper than a boolean mask of t; only if the
    # sum is not finite (NaN/inf inside, or an overflow of huge finite values) look closer.
    with torch.no_grad():
        if bool(torch.isfinite(t.sum(dtype=torch.float64))):
            return True
        return bool(torch.isfinite(t).all())


def _check_theta_x(theta: torch.Tensor, X: torch.Tensor) -> None:
    if not isinstance(theta, torch.Tensor) or not theta.is_floating_point():
        raise ValueError("theta must be a floating-point torch.Tensor")
    _as_grid(theta)
    if theta.shape[-2] < 1 or theta.shape[-1] < 1 or (theta.dim() == 3 and theta.shape[0] < 1):
        raise ValueError(f"theta has an empty dimension: shape {tuple(theta.shape)}")
    if not isinstance(X, torch.Tensor) or X.dim() != 2:
        raise ValueError(f"X must be a 2-D tensor (N, d), got {getattr(X, 'shape', type(X))}")
    if X.shape[1] + 1 != theta.shape[-1]:
        raise ValueError(
            f"X has {X.shape[1]} feature columns but theta's last dimension is "
            f"{theta.shape[-1]}; it must be d+1 = {X.shape[1] + 1} (bias last)"
        )
    if X.dtype != theta.dtype:
        raise ValueError(f"X has dtype {X.dtype} but theta has {theta.dtype}; convert one of them")
    if X.device != theta.device:
        raise ValueError(f"X is on {X.device} but theta is on {theta.device}")
    if not _all_finite(theta):
        raise ValueError("theta contains NaN or infinite values")
    if not _all_finite(X):
        raise ValueError("X contains NaN or infinite values")


def _check_labels(name: str, v: torch.Tensor, n: int, device: torch.device) -> None:
    if not isinstance(v, torch.Tensor) or v.dtype != torch.int64 or v.dim() != 1:
        raise ValueError(
            f"{name} must be a 1-D int64 tensor, got "
            f"{getattr(v, 'dtype', type(v))} with shape {tuple(getattr(v, 'shape', ()))}"
        )
    if v.shape[0] != n:
        raise ValueError(f"{name} has {v.shape[0]} entries but X has {n} rows")
    if v.device != device:
        raise ValueError(f"{name} is on {v.device} but X is on {device}")


def _check_domain_ids(domains: torch.Tensor, num_domains: int | None) -> None:
    if num_domains is not None and (isinstance(num_domains, bool) or not isinstance(num_domains, int)
                                    or num_domains < 1):
        raise ValueError(f"num_domains must be a positive int, got {num_domains!r}")
    if domains.numel() == 0:
        return
    lo, hi = int(domains.min()), int(domains.max())
    if lo < 0:
        raise ValueError(f"domains contains the negative id {lo}; ids must be 0..K-1")
    if num_domains is not None and hi >= num_domains:
        raise ValueError(f"domains contains the id {hi} but num_domains={num_domains} (ids 0..{num_domains - 1})")


def _check_square(name: str, m: torch.Tensor | None, X: torch.Tensor) -> None:
    if m is None:
        return
    n = X.shape[0]
    if not isinstance(m, torch.Tensor) or tuple(m.shape) != (n, n):
        raise ValueError(f"{name} must have shape ({n}, {n}) for X's {n} rows, got {tuple(getattr(m, 'shape', ()))}")
    if m.dtype != X.dtype or m.device != X.device:
        raise ValueError(f"{name} must have X's dtype and device ({X.dtype}, {X.device}), got ({m.dtype}, {m.device})")
    if not _all_finite(m):
        raise ValueError(f"{name} contains NaN or infinite values")


def _validate(theta, X, y=None, domains=None, num_domains=None, kernel=None, gram=None) -> None:
    _check_theta_x(theta, X)
    n = X.shape[0]
    if y is not None:
        _check_labels("y", y, n, X.device)
        C = theta.shape[-2]
        if n and (int(y.min()) < 0 or int(y.max()) >= C):
            raise ValueError(f"y has labels outside 0..{C - 1} (theta has C = {C} classes)")
    if domains is not None:
        _check_labels("domains", domains, n, X.device)
        _check_domain_ids(domains, num_domains)
    _check_square("kernel", kernel, X)
    _check_square("gram", gram, X)


def _check_choice(name: str, value, options) -> None:
    if value not in options:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(map(repr, options))}")


# ------------------------------------------------------------------------ basic pieces


def augment(X: torch.Tensor) -> torch.Tensor:
    """``X̃ = [X, 1]``: the bias as a constant feature."""
    return torch.cat([X, X.new_ones(X.shape[0], 1)], dim=1)


def _logits(th: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """(G, N, C) logits; one (N,d)×(d,G·C) matmul for the whole grid."""
    G, C, d1 = th.shape
    Wt = th[:, :, : d1 - 1].reshape(G * C, d1 - 1)
    z = (X @ Wt.T).reshape(X.shape[0], G, C).permute(1, 0, 2)
    return z + th[:, :, d1 - 1].unsqueeze(1)


def logits(theta: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """(G, N, C) logits (or (N, C) for a single head)."""
    th, single = _as_grid(theta)
    z = _logits(th, X)
    return z[0] if single else z


def probabilities(theta: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """(G, N, C) softmax probabilities (or (N, C) for a single head)."""
    return torch.softmax(logits(theta, X), dim=-1)


def present_domains(domains: torch.Tensor, num_domains: int | None = None) -> torch.Tensor:
    """Sorted int64 ids of the domains with at least one row: column k of every
    ``(…, K')`` result belongs to domain ``present_domains(domains)[k]``."""
    if not isinstance(domains, torch.Tensor) or domains.dtype != torch.int64 or domains.dim() != 1:
        raise ValueError(f"domains must be a 1-D int64 tensor, got {getattr(domains, 'dtype', type(domains))}")
    _check_domain_ids(domains, num_domains)
    return torch.unique(domains, sorted=True)


def _weights(domains: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    ids, inverse = torch.unique(domains, sorted=True, return_inverse=True)
    if ids.numel() == 0:
        return torch.zeros(0, 0, dtype=dtype, device=domains.device), ids
    onehot = F.one_hot(inverse, ids.numel()).to(dtype)
    return onehot / onehot.sum(0), ids


def domain_weights(domains: torch.Tensor, num_domains: int | None = None,
                   dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(N, K') matrix with ``1/n_e`` where row i is in present domain e, else 0."""
    present_domains(domains, num_domains)  # validation only
    return _weights(domains, dtype)[0]


def _centred(W: torch.Tensor) -> torch.Tensor:
    """c_ie = W_ie - mean_f W_if: the weights of H_e - H̄ (and G_e - Ḡ)."""
    return W - W.mean(dim=1, keepdim=True)


def feature_gram(X: torch.Tensor) -> torch.Tensor:
    """``X̃X̃ᵀ`` (N×N) without materialising X̃: the ones column adds 1 everywhere."""
    return X @ X.T + 1


def feature_kernel(X: torch.Tensor, gram: torch.Tensor | None = None) -> torch.Tensor:
    """``S = (X̃X̃ᵀ)∘(X̃X̃ᵀ)`` (N×N), reusable across heads and calls on the same rows
    (pass it as ``hessian_variance(..., kernel=S)``)."""
    g = feature_gram(X) if gram is None else gram
    return g * g


def _scale(normalize: str | None, d: int, C: int) -> float:
    """Factor applied to every per-domain gradient and Hessian."""
    return 1.0 / (d * C) if normalize == "dC" else 1.0


def _zero(th: torch.Tensor) -> torch.Tensor:
    # Fewer than two domains: zero, but still attached to theta's graph.
    return th.sum(dim=(1, 2)) * 0


def _finish(out: torch.Tensor, single: bool) -> torch.Tensor:
    return out[0] if single else out


# ------------------------------------------------------------------ gradients, losses


def _per_domain_grads(P: torch.Tensor, Y1: torch.Tensor, Xt: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """(G, K, C, d̃): sum_n W[n,k] (P-Y)[g,n,c] x̃[n]."""
    R = P - Y1
    RW = R.unsqueeze(1) * W.T.unsqueeze(0).unsqueeze(-1)  # (G, K, N, C)
    return torch.einsum("gknc,nd->gkcd", RW, Xt)


def per_domain_gradients(theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor, domains: torch.Tensor,
                         num_domains: int | None = None, normalize: Normalize = None) -> torch.Tensor:
    """(G, K', C, d+1) gradients of each present domain's mean CE (or (K', C, d+1))."""
    _check_choice("normalize", normalize, NORMALIZE_OPTIONS)
    _validate(theta, X, y, domains, num_domains)
    th, single = _as_grid(theta)
    W, _ = _weights(domains, th.dtype)
    P = torch.softmax(_logits(th, X), dim=-1)
    Y1 = F.one_hot(y, th.shape[1]).to(th.dtype)
    Gd = _per_domain_grads(P, Y1, augment(X), W) * _scale(normalize, X.shape[1], th.shape[1])
    return _finish(Gd, single)


def _losses(z: torch.Tensor, y: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    nll = -torch.log_softmax(z, dim=-1).gather(-1, y.view(1, -1, 1).expand(z.shape[0], -1, 1)).squeeze(-1)
    return nll @ W


def per_domain_losses(theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor, domains: torch.Tensor,
                      num_domains: int | None = None) -> torch.Tensor:
    """(G, K') mean cross-entropy of each present domain (or (K',) for one head)."""
    _validate(theta, X, y, domains, num_domains)
    th, single = _as_grid(theta)
    W, _ = _weights(domains, th.dtype)
    return _finish(_losses(_logits(th, X), y, W), single)


# ------------------------------------------------------------------------ cost model


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


def choose_gradient_method(G: int, N: int, d: int, C: int, K: int, *, gram_given: bool = False) -> str:
    """``"kernel"`` when ``N² (d̃ + G C)`` beats the direct ``G K N C d̃``, else ``"direct"``."""
    d1 = d + 1
    direct = 2.0 * G * K * N * C * d1
    kernel = (0.0 if gram_given else 2.0 * N * N * d1) + 2.0 * N * N * (K + G * C)
    return "kernel" if kernel < direct else "direct"


# --------------------------------------------------------------------- Hessian forms


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


def _split_rows(domains: torch.Tensor) -> list[torch.Tensor]:
    """Row indices of each present domain, in id order (a loop over domains, not rows)."""
    _, inverse, counts = torch.unique(domains, sorted=True, return_inverse=True, return_counts=True)
    order = torch.argsort(inverse, stable=True)
    return list(torch.split(order, counts.tolist()))


def _hess_binary(P: torch.Tensor, Xt: torch.Tensor, domains: torch.Tensor) -> torch.Tensor:
    """K'·R_H for C = 2 from the d̃×d̃ moments M_e = (1/n_e) Σ_{i∈e} q_i x̃_i x̃_iᵀ."""
    q = P[..., 0] * P[..., 1]  # (G, N)
    Ms = []
    for rows in _split_rows(domains):
        Xe = Xt.index_select(0, rows)
        qe = q.index_select(1, rows) / rows.numel()
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


class _ElementwiseKernel(torch.autograd.Function):
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


def _hess_elementwise_autograd(P: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """Same value as _ElementwiseKernel, differentiable w.r.t. T too (X requires grad)."""
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
    return _ElementwiseKernel.apply(P, T)


def _hessian_from_probs(P: torch.Tensor, X: torch.Tensor, domains: torch.Tensor, W: torch.Tensor,
                        method: str, kernel: torch.Tensor | None, gram: torch.Tensor | None) -> torch.Tensor:
    """K'·R_H per head (unnormalised), K' = W.shape[1] ≥ 2."""
    G, N, C = P.shape
    K = W.shape[1]
    if method == "auto":
        method = choose_hessian_method(G, N, X.shape[1], C, K, kernel_given=kernel is not None or gram is not None,
                                       itemsize=P.element_size())
    if method == "binary":
        return _hess_binary(P, augment(X), domains)
    if method == "direct":
        return _hess_direct(P, augment(X), W)
    S = kernel if kernel is not None else feature_kernel(X, gram)
    c = _centred(W)
    T = S * (c @ c.T)
    return _hess_kernel(P, T)


def hessian_variance(theta: torch.Tensor, X: torch.Tensor, domains: torch.Tensor, method: Method = "auto",
                     normalize: Normalize = None, num_domains: int | None = None, *,
                     kernel: torch.Tensor | None = None, check: bool = True) -> torch.Tensor:
    """R_H = (1/K') Σ_e ‖H_e − H̄‖²_F over present domains; scalar, or (G,) for a grid.

    ``kernel``: a precomputed ``feature_kernel(X)`` (used by the kernel method, also
    by ``"auto"``'s cost estimate). ``check=False`` skips the input validation (it
    reads values back from the device) for callers that validated once already.
    """
    _check_choice("method", method, METHODS)
    _check_choice("normalize", normalize, NORMALIZE_OPTIONS)
    if check:
        _validate(theta, X, None, domains, num_domains, kernel=kernel)
    th, single = _as_grid(theta)
    C = th.shape[1]
    if method == "binary" and C != 2:
        raise ValueError(f"method='binary' needs C = 2 classes, theta has C = {C}")
    W, _ = _weights(domains, th.dtype)
    K = W.shape[1]
    if K < 2:
        return _finish(_zero(th), single)
    P = torch.softmax(_logits(th, X), dim=-1)
    out = _hessian_from_probs(P, X, domains, W, method, kernel, None) / K
    return _finish(out * _scale(normalize, X.shape[1], C) ** 2, single)


# --------------------------------------------------------------------- gradient forms


def _gradient_from_probs(P: torch.Tensor, Y1: torch.Tensor, X: torch.Tensor, W: torch.Tensor, method: str,
                         gram: torch.Tensor | None) -> torch.Tensor:
    """K'·R_g per head (unnormalised), K' = W.shape[1] ≥ 2."""
    G, N, C = P.shape
    K = W.shape[1]
    if method == "auto":
        method = choose_gradient_method(G, N, X.shape[1], C, K, gram_given=gram is not None)
    c = _centred(W)
    if method == "direct":
        D = _per_domain_grads(P, Y1, augment(X), c)
        return D.pow(2).sum(dim=(1, 2, 3))
    Tg = (feature_gram(X) if gram is None else gram) * (c @ c.T)
    R = P - Y1
    TR = (Tg @ R.permute(1, 0, 2).reshape(N, G * C)).reshape(N, G, C).permute(1, 0, 2)
    return (TR * R).sum(dim=(1, 2))


def gradient_variance(theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor, domains: torch.Tensor,
                      normalize: Normalize = None, num_domains: int | None = None, *,
                      method: GradMethod = "auto", gram: torch.Tensor | None = None,
                      check: bool = True) -> torch.Tensor:
    """R_g = (1/K') Σ_e ‖G_e − Ḡ‖²_F over present domains; scalar, or (G,) for a grid.

    ``gram``: a precomputed ``feature_gram(X)`` for the kernel form.
    """
    _check_choice("method", method, GRAD_METHODS)
    _check_choice("normalize", normalize, NORMALIZE_OPTIONS)
    if check:
        _validate(theta, X, y, domains, num_domains, gram=gram)
    th, single = _as_grid(theta)
    W, _ = _weights(domains, th.dtype)
    K = W.shape[1]
    if K < 2:
        return _finish(_zero(th), single)
    P = torch.softmax(_logits(th, X), dim=-1)
    Y1 = F.one_hot(y, th.shape[1]).to(th.dtype)
    out = _gradient_from_probs(P, Y1, X, W, method, gram) / K
    return _finish(out * _scale(normalize, X.shape[1], th.shape[1]) ** 2, single)


# ------------------------------------------------------------------------ everything


def penalty_terms(theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor, domains: torch.Tensor,
                  normalize: Normalize = None, num_domains: int | None = None, *,
                  method: Method = "auto", gram: torch.Tensor | None = None,
                  check: bool = True) -> Penalties:
    """Per-domain mean CE losses, R_g and R_H from one logits pass.

    The Gram matrix ``X̃X̃ᵀ`` (computed here unless ``gram`` is given) serves both
    the gradient and the Hessian kernel forms. ``method`` applies to R_H; R_g uses
    its kernel form whenever the Gram matrix is available anyway.
    """
    _check_choice("method", method, METHODS)
    _check_choice("normalize", normalize, NORMALIZE_OPTIONS)
    if check:
        _validate(theta, X, y, domains, num_domains, gram=gram)
    th, single = _as_grid(theta)
    G, C, _ = th.shape
    N, d = X.shape
    if method == "binary" and C != 2:
        raise ValueError(f"method='binary' needs C = 2 classes, theta has C = {C}")
    W, ids = _weights(domains, th.dtype)
    K = W.shape[1]
    z = _logits(th, X)
    losses = _losses(z, y, W)
    if K < 2:
        zero = _zero(th)
        return Penalties(_finish(losses, single), _finish(zero, single), _finish(zero, single), ids)
    P = torch.softmax(z, dim=-1)
    Y1 = F.one_hot(y, C).to(th.dtype)
    hmethod = method
    if hmethod == "auto":
        hmethod = choose_hessian_method(G, N, d, C, K, kernel_given=gram is not None, itemsize=th.element_size())
    if gram is None and (hmethod == "kernel" or choose_gradient_method(G, N, d, C, K) == "kernel"):
        gram = feature_gram(X)
    gmethod = "kernel" if gram is not None else "direct"
    s2 = _scale(normalize, d, C) ** 2
    rg = _gradient_from_probs(P, Y1, X, W, gmethod, gram) * (s2 / K)
    rh = _hessian_from_probs(P, X, domains, W, hmethod, None, gram) * (s2 / K)
    return Penalties(_finish(losses, single), _finish(rg, single), _finish(rh, single), ids)
