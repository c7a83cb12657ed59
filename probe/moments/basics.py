"""The pieces every moment is built from: the augmented features, logits, domain weights,
the Gram matrix and its square, and the normalisation factor."""

from __future__ import annotations

from typing import Literal

from base.lazy import lazy_import
from probe.moments.checks import _as_grid, _check_domain_ids

torch = lazy_import("torch")

Normalize = Literal[None, "dC"]
NORMALIZE_OPTIONS: tuple[str | None, ...] = (None, "dC")
#: below this many classes torch's CPU log_softmax and softmax are not vectorised across
#: rows: at ten classes they took four times as long as the composition in ``log_softmax``
SMALL_CLASSES = 16


def log_softmax(z: torch.Tensor) -> torch.Tensor:
    """``log_softmax`` over the last axis. On a CPU torch's kernel is not vectorised across
    rows for few classes, so below SMALL_CLASSES it is composed here: for two classes as
    ``log σ(∓(z₁ − z₀))`` (a third of torch's time), otherwise as ``(z − m) − log Σ exp(z − m)``
    with m the row's maximum. Both are the stable forms, equal to torch's to rounding."""
    if z.is_cuda or z.shape[-1] >= SMALL_CLASSES:
        return torch.log_softmax(z, -1)
    if z.shape[-1] == 2:
        gap = z[..., 1] - z[..., 0]
        return torch.stack([torch.nn.functional.logsigmoid(-gap), torch.nn.functional.logsigmoid(gap)], -1)
    shifted = z - z.amax(-1, keepdim=True)
    return shifted.sub_(shifted.exp().sum(-1, keepdim=True).log_())


def softmax(z: torch.Tensor) -> torch.Tensor:
    """``softmax`` over the last axis; on a CPU with two classes as ``σ(∓(z₁ − z₀))``, a
    fifth of torch's time (see ``log_softmax``)."""
    if z.is_cuda or z.shape[-1] != 2:
        return torch.softmax(z, -1)
    gap = z[..., 1] - z[..., 0]
    return torch.stack([torch.sigmoid(-gap), torch.sigmoid(gap)], -1)


def augment(X: torch.Tensor) -> torch.Tensor:
    """``X̃ = [X, 1]``: the bias as a constant feature."""
    return torch.cat([X, X.new_ones(X.shape[0], 1)], dim=1)


def _logits(th: torch.Tensor, X: torch.Tensor, bias: bool = True) -> torch.Tensor:
    """(G, N, C) logits; one (N,d)×(d,G·C) matmul for the whole grid. With ``bias`` the
    head's last column is the bias; without, the head is ``(G, C, d)``."""
    G, C, D = th.shape
    d = D - 1 if bias else D
    Wt = th[:, :, :d].reshape(G * C, d)
    z = (X @ Wt.T).reshape(X.shape[0], G, C).permute(1, 0, 2)
    return z + th[:, :, d].unsqueeze(1) if bias else z


def logits(theta: torch.Tensor, X: torch.Tensor, bias: bool = True) -> torch.Tensor:
    """(G, N, C) logits (or (N, C) for a single head); ``bias=False``: theta has no bias column."""
    th, single = _as_grid(theta)
    z = _logits(th, X, bias)
    return z[0] if single else z


def design(X: torch.Tensor, bias: bool = True) -> torch.Tensor:
    """The rows the head is linear in: ``X̃ = [X, 1]`` with a bias, ``X`` without."""
    return augment(X) if bias else X


def probabilities(theta: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """(G, N, C) softmax probabilities (or (N, C) for a single head)."""
    return softmax(logits(theta, X))


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
    onehot = torch.nn.functional.one_hot(inverse, ids.numel()).to(dtype)
    return onehot / onehot.sum(0), ids


def domain_weights(domains: torch.Tensor, num_domains: int | None = None,
                   dtype: torch.dtype | None = None) -> torch.Tensor:
    """(N, K') matrix with ``1/n_e`` where row i is in present domain e, else 0."""
    present_domains(domains, num_domains)  # validation only
    return _weights(domains, torch.float64 if dtype is None else dtype)[0]


def domain_rows(domains: torch.Tensor) -> list[tuple[slice | torch.Tensor, int]]:
    """Each present domain's rows and their number, in id order: slices (views, no copies)
    when the rows are sorted by domain, as the trainer's batches are; index tensors otherwise."""
    if bool((domains[1:] >= domains[:-1]).all()):
        counts = torch.unique_consecutive(domains, return_counts=True)[1].tolist()
        starts = [0]
        for n in counts[:-1]:
            starts.append(starts[-1] + n)
        return [(slice(a, a + n), n) for a, n in zip(starts, counts, strict=True)]
    _, inverse, counts = torch.unique(domains, sorted=True, return_inverse=True, return_counts=True)
    order = torch.argsort(inverse, stable=True)
    return [(rows, rows.numel()) for rows in torch.split(order, counts.tolist())]


def domain_sums(V: torch.Tensor, Xt: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """(G, K', C, d̃): ``Σ_n W[n,k] V[g,n,c] X̃[n,d]`` for domain weights ``W``
    (``domain_weights``: one non-zero per row), domain by domain on its own rows: a
    domain's rows are a K'-th of the batch, so this is K' times fewer multiply-adds than
    contracting over every row with the dense ``W``. Rows sorted by domain (the trainer's
    batches are) are read as slices, without copies."""
    dom = W.argmax(dim=1)
    VW = V * W.gather(1, dom.unsqueeze(1)).T.unsqueeze(-1)  # (G, N, C): each row's own weight
    if bool((dom[1:] >= dom[:-1]).all()):
        ends = torch.bincount(dom, minlength=W.shape[1]).cumsum(0).tolist()
        bounds = zip([0, *ends[:-1]], ends, strict=True)
        parts = [torch.einsum("gnc,nd->gcd", VW[:, a:b], Xt[a:b]) for a, b in bounds]
    else:
        rows = [(dom == k).nonzero().squeeze(1) for k in range(W.shape[1])]
        parts = [torch.einsum("gnc,nd->gcd", VW.index_select(1, r), Xt.index_select(0, r)) for r in rows]
    return torch.stack(parts, dim=1)


def _centred(W: torch.Tensor) -> torch.Tensor:
    """c_ie = W_ie - mean_f W_if: the weights of H_e - H̄ (and G_e - Ḡ)."""
    return W - W.mean(dim=1, keepdim=True)


def feature_gram(X: torch.Tensor, bias: bool = True) -> torch.Tensor:
    """``X̃X̃ᵀ`` (N×N) without materialising X̃: the ones column adds 1 everywhere (``XXᵀ``
    without a bias)."""
    return X @ X.T + 1 if bias else X @ X.T


def feature_kernel(X: torch.Tensor, gram: torch.Tensor | None = None, bias: bool = True) -> torch.Tensor:
    """``S = (X̃X̃ᵀ)∘(X̃X̃ᵀ)`` (N×N), reusable across heads and calls on the same rows
    (pass it as ``hessian_variance(..., kernel=S)``)."""
    g = feature_gram(X, bias) if gram is None else gram
    return g * g


def _scale(normalize: str | None, d: int, C: int) -> float:
    """Factor applied to every per-domain gradient and Hessian."""
    return 1.0 / (d * C) if normalize == "dC" else 1.0


def _zero(th: torch.Tensor) -> torch.Tensor:
    # Fewer than two domains: zero, but still attached to theta's graph.
    return th.sum(dim=(1, 2)) * 0


def _finish(out: torch.Tensor, single: bool) -> torch.Tensor:
    return out[0] if single else out
