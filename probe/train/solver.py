"""Full-batch L-BFGS for the convex, penalty-free heads, a whole grid of heads at once.

Head g minimises the trainer's full-batch objective (``probe.methods.base``)

    f_g(θ) = Σ_i w_i CE(θ_g x̃_i, y_i) + λ_g/2 ‖W_g‖²      (the bias is not penalised)

(x̃ = [x, 1]; a problem whose heads have no bias column, ``Problem.bias`` false, uses x)

with row weights ``w`` summing to 1 (1/N for the pooled CE, 1/(K' n_e) for the
mean of per-domain means). This is scikit-learn's ``LogisticRegression`` objective
divided by C·Σs (s its sample weights, w = s/Σs): the same optimum at
C = 1/(λ Σs) (2/(λ Σs) for two classes) and the same scale of gradient, so ``tol``
means what sklearn's ``tol`` means for lbfgs.

Why it is shaped this way:

* At N ≫ d an iteration costs its passes over X, and this solver makes two,
  whatever the number of heads: one matmul for the logits of every head's search
  direction (X̃ P, all heads in one (N×d)·(d×GC) product) and one for every head's
  gradient at the accepted point (Rᵀ X̃).
* The line search runs in logit space, on z + t·X̃P, without touching X: a
  safeguarded Newton search for the root of φ'(t), each head its own t. It needs
  no difference of two losses, so it is as reliable in float32 as in float64.
* Embeddings are strongly correlated, which makes plain L-BFGS (and sklearn's)
  take hundreds of iterations. The initial inverse Hessian is therefore not a
  multiple of I but (Σ̃/C + λE)⁻¹, Σ̃ the weighted second moment of x̃ on a fixed
  subsample of rows (shrunk a little toward its mean diagonal, which a sample moment
  needs) and E the penalty's pattern (the softmax Hessian at uniform probabilities,
  exact for the penalty): the same optimum in a few dozen iterations. It costs one
  (d̃×n)·(n×d̃) product and a Cholesky factor per head.
* Parameter-sized state (θ, gradients, the L-BFGS pairs) is float64 whatever the
  data's dtype; losses and the line search's sums are accumulated in float64.
* Two classes are solved as one logit against a fixed zero, v = W₁ − W₀ (and the
  biases' difference), with λ/2 for λ: from θ = 0 every iterate of the two-row head
  keeps W₀ = −W₁ (the gradient's class rows sum to zero), so the optimum is the
  same, [−v/2, v/2], and so are f and max|∇f| (∂f/∂v is the gradient's class-1 row);
  each pass over X then carries one column per head instead of two, and the line
  search and the gradient go through σ(u) and softplus instead of a two-way softmax.

Stop: a head has converged when max|∇f_g| ≤ tol (scipy's pgtol, sklearn's tol).
A head still above tol after ``max_iter`` iterations, or whose line search can no
longer find a step (stalled at the precision of the dtype), stops as not
converged; one whose loss stops being finite, as diverged. Heads leave the
matmuls as they stop, so a grid costs what its slowest head needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from probe.moments.basics import log_softmax

#: L-BFGS memory: (s, y) pairs kept per head (scipy's and sklearn's default)
MEMORY = 10
#: the line search accepts t once |φ'(t)| ≤ CURVATURE·|φ'(0)| (strong Wolfe, c₂)
CURVATURE = 0.1
#: line-search evaluations at most per iteration; more means it stalled
LINE_SEARCH_STEPS = 20
#: rows of the preconditioner's second moment: this many per feature column (at most N);
#: an approximation is all a preconditioner needs
PRECONDITIONER_ROWS_PER_COLUMN = 4
#: the sample moment is shrunk this far toward its mean diagonal (times I), as Ledoit and
#: Wolf shrink a covariance: a moment of a few rows per column underestimates its smallest
#: directions (and is singular when d ≥ N), and its inverse would over-amplify them. At 5%,
#: iterations at λ = 1e-4 went from 54 to 43 at 4,795 × 512 with ten classes, from 100 to 19
#: on the demo features (898 × 1,280), and from 29 to 26 with two classes; four rows per
#: column then did as well as six (which cost 50% more rows)
PRECONDITIONER_SHRINK = 0.05
#: iterations between exact recomputations of the logits, which are otherwise updated
#: (z += t·X̃p) and so collect rounding errors: a float32 concern over long runs
REFRESH_EVERY = 50
#: statuses of a head (probe.records.results.STATUSES spells them the same)
CONVERGED, NOT_CONVERGED, DIVERGED = "ok", "not_converged", "diverged"


@dataclass
class Problem:
    """What every head of a chunk shares: the training rows and their weights."""

    X: torch.Tensor  # (N, d) preprocessed features, in the solver's dtype
    y: torch.Tensor  # (N,) int64 classes
    w: torch.Tensor  # (N,) row weights summing to 1 (the CE weighting), X's dtype
    num_classes: int
    bias: bool = True  # heads have a bias column (last, unpenalised); without, θ is (C, d)

    def __post_init__(self) -> None:
        # constants of every iteration: y in X's dtype (the one-logit residual σ(u) − y),
        # 1 − 2y (the one-logit CE is softplus((1 − 2y)·u)) and the weights in float64
        self.y_float = self.y.to(self.X.dtype).view(-1, 1, 1)
        self.sign = 1 - 2 * self.y_float
        self.w64 = self.w.to(torch.float64).view(-1, 1, 1)

    @property
    def class_rows(self) -> int:
        """Class rows the solver carries per head: one for two classes (module docstring)."""
        return 1 if self.num_classes == 2 else self.num_classes


@dataclass
class Solution:
    """Per head: the final point, its iterations, its fate and its trace."""

    theta: torch.Tensor  # (G, C, d+1) float64, bias last ((G, C, d) without a bias)
    iterations: list[int]
    status: list[str]  # CONVERGED, NOT_CONVERGED or DIVERGED
    grad_max: list[float]  # max|∇f| at the final point
    loss: list[list[float]]  # f after each iteration
    ce: list[list[float]]  # its cross-entropy part, Σ w_i CE_i
    grad_trace: list[list[float]]  # max|∇f| after each iteration


def preconditioner(pb: Problem, lam: torch.Tensor) -> torch.Tensor:
    """(G, D, D) in X's dtype: (Σ̃/C + λ_g E + δI)⁻¹ per head (module docstring), the weights'
    block of Σ̃ shrunk toward its mean diagonal (PRECONDITIONER_SHRINK); δ keeps it positive
    definite when λ is 0 and the features are constant, and I stands in where the features
    are not finite. The factor is float64; the inverse is formed from it in X's
    dtype, which is all a preconditioner needs (and float32 halves that step's time)."""
    N, d = pb.X.shape
    n = min(N, PRECONDITIONER_ROWS_PER_COLUMN * (d + 1))
    rows = torch.linspace(0, N - 1, n, device=pb.X.device).round().long()  # fixed, spread over the data
    w = pb.w[rows]
    w = w / w.sum()
    # the softmax Hessian at uniform probabilities: 1/C per class row, p(1 − p) = 1/4 for one logit
    second = _second_moment(pb.X.index_select(0, rows), w, owned=True).to(torch.float64)
    second /= 4 if pb.class_rows == 1 else pb.num_classes
    if not pb.bias:
        second = second[:d, :d]
    D = second.shape[0]
    top = second[:d, :d]
    level = float(top.diagonal().mean())
    top.mul_(1 - PRECONDITIONER_SHRINK).diagonal().add_(PRECONDITIONER_SHRINK * level)
    penalised = torch.ones(D, dtype=torch.float64, device=second.device)
    penalised[d:] = 0  # the bias, when there is one
    jitter = 1e-6 * float(second.diagonal().mean()) + 1e-12
    M = second + torch.diag_embed(lam.view(-1, 1) * penalised + jitter)
    L, info = torch.linalg.cholesky_ex(torch.nan_to_num(M))
    L = L.to(pb.X.dtype)
    if not bool(info.any()):  # the usual case, without two (G, D, D) selections
        return torch.cholesky_inverse(L)
    ok, eye = (info == 0).view(-1, 1, 1), torch.eye(D, dtype=L.dtype, device=M.device)
    # a head whose matrix is not positive definite (non-finite features) goes unpreconditioned
    return torch.where(ok, torch.cholesky_inverse(torch.where(ok, L, eye)), eye)


def _second_moment(X: torch.Tensor, w: torch.Tensor, blocks: int = 8, owned: bool = False) -> torch.Tensor:
    """(d+1, d+1) Σ_i w_i x̃_i x̃_iᵀ, x̃ = [x, 1], for weights summing to 1: the bias row is
    the weighted mean (no copy of X with a column of ones), and the symmetric d × d part is
    built from the column blocks on and above the diagonal, 9/16 of a full product's work.
    ``owned``: X is a scratch copy, scaled in place (by √w) instead of copied."""
    n, d = X.shape
    root = w.sqrt().unsqueeze(1)
    Xr = X.mul_(root) if owned else X * root
    out = X.new_empty(d + 1, d + 1)
    edges = [round(d * k / blocks) for k in range(blocks + 1)]
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        out[a:b, a:d] = Xr[:, a:b].T @ Xr[:, a:]
    out[:d, :d] = out[:d, :d].triu() + out[:d, :d].triu(1).T
    out[:d, d] = out[d, :d] = root.view(-1) @ Xr
    out[d, d] = 1
    return out


class _Heads:
    """The active heads' state; the head axis is dim 0 (dim 1 of the N-sized tensors)."""

    def __init__(self, pb: Problem, lam: torch.Tensor, precondition: bool) -> None:
        N, d = pb.X.shape
        G, C = lam.shape[0], pb.class_rows
        f64 = dict(dtype=torch.float64, device=pb.X.device)
        self.ids = list(range(G))  # the active heads' indices in the grid
        self.lam = lam.to(**f64)
        self.d = d
        self.theta = torch.zeros(G, C, d + int(pb.bias), **f64)
        self.z = torch.zeros(N, G, C, dtype=pb.X.dtype, device=pb.X.device)  # logits at θ
        self.terms = row_terms(self.z)
        # the stored pairs, oldest first (the first ``pairs`` positions); a skipped pair is
        # stored as zeros, so it contributes nothing, as in the two-loop recursion. The
        # compact form reads y only through H₀y and these products, so y itself is not kept
        self.S = torch.zeros(G, MEMORY, C * self.theta.shape[-1], **f64)
        self.HY = torch.zeros_like(self.S)  # H₀ without γ applied to each y
        self.SY = torch.zeros(G, MEMORY, MEMORY, **f64)  # s_i·y_j for i ≤ j (R and D read no more)
        self.YHY = torch.zeros_like(self.SY)  # y_i·H₀y_j, without γ
        self.gamma = torch.ones(G, **f64)  # the scale of H₀: sᵀy / yᵀH₀y of the newest pair
        self.pairs = 0  # pairs stored (every head the same count, skipped ones included)
        # in the data's dtype: a preconditioner needs no more precision, and it halves the reads
        self.Minv = preconditioner(pb, self.lam) if precondition else None
        self.g, self.ce = gradient(pb, self.terms, self.theta, self.lam)

    @property
    def loss(self) -> torch.Tensor:
        W = self.theta[..., : self.d]
        return self.ce + self.lam / 2 * (W * W).sum((1, 2))

    def keep(self, mask: list[bool]) -> None:
        """Drop the heads where ``mask`` is False."""
        if all(mask):
            return
        self.ids = [g for g, m in zip(self.ids, mask, strict=True) if m]
        index = torch.tensor([k for k, m in enumerate(mask) if m], dtype=torch.long, device=self.g.device)
        for name in ("lam", "theta", "S", "HY", "SY", "YHY", "gamma", "g", "ce", "Minv"):
            value = getattr(self, name)
            setattr(self, name, value.index_select(0, index) if value is not None else None)
        self.z, self.terms = self.z.index_select(1, index), self.terms.index_select(1, index)

    def h0(self, q: torch.Tensor) -> torch.Tensor:
        """The initial inverse Hessian (without γ) applied to flat (A, C·D) vectors."""
        if self.Minv is None:
            return q
        A, D = q.shape[0], self.Minv.shape[-1]
        return torch.bmm(q.view(A, -1, D).to(self.Minv.dtype), self.Minv).view(A, -1).to(q.dtype)

    def forget(self, heads: torch.Tensor) -> None:
        """Restart the heads of the mask ``heads`` from steepest descent: no pairs, γ = 1."""
        for t in (self.S, self.HY, self.SY, self.YHY):
            t[heads] = 0.0
        self.gamma[heads] = 1.0

    def direction(self) -> torch.Tensor:
        """−H g, (A, C, D), by the compact form of L-BFGS (Byrd, Nocedal & Schnabel 1994,
        eq. 2.6), the two-loop recursion's H in a few batched products instead of four
        small operations per pair:

            H g = H₀g + S R⁻ᵀ[(D + YᵀH₀Y) R⁻¹Sᵀg − YᵀH₀g] − H₀Y R⁻¹Sᵀg,

        S, Y the stored pairs oldest first, R the upper triangle of SᵀY, D its diagonal,
        H₀ = γ·h0. A skipped pair (stored as zeros) gets a unit diagonal in R and zeros
        elsewhere, so it contributes nothing."""
        g = self.g.flatten(1)
        hg = self.gamma.unsqueeze(-1) * self.h0(g)
        k = self.pairs
        if k == 0:
            return (-hg).view_as(self.g)
        S, HY, SY = self.S[:, :k], self.HY[:, :k], self.SY[:, :k, :k]
        gamma = self.gamma.view(-1, 1, 1)
        diag = SY.diagonal(dim1=1, dim2=2)  # sᵀy > 0 for a kept pair, exactly 0 for a skipped one
        R = SY.triu() + torch.diag_embed((diag == 0).to(g.dtype))
        B = torch.diag_embed(diag) + gamma * self.YHY[:, :k, :k]
        a = torch.linalg.solve_triangular(R, torch.bmm(S, g.unsqueeze(-1)), upper=True)  # R⁻¹Sᵀg
        v = gamma * torch.bmm(HY, g.unsqueeze(-1))  # YᵀH₀g
        c = torch.linalg.solve_triangular(R.mT, torch.bmm(B, a) - v, upper=False)
        Hg = hg + torch.bmm(c.mT, S).squeeze(1) - torch.bmm((gamma * a).mT, HY).squeeze(1)
        return (-Hg).view_as(self.g)

    def remember(self, s: torch.Tensor, yv: torch.Tensor) -> None:
        """Store this iteration's pair (s, y) as the newest, dropping the oldest when the
        memory is full; one with sᵀy ≤ 0 (no step) is stored as zeros (skipped)."""
        s, yv = s.flatten(1), yv.flatten(1)
        hy = self.h0(yv)
        sy, yhy = (s * yv).sum(-1), (yv * hy).sum(-1)
        ok = (sy > 1e-12 * s.norm(dim=-1) * yv.norm(dim=-1)) & (yhy > 0)
        keep = ok.unsqueeze(-1)
        s, yv, hy = torch.where(keep, s, 0.0), torch.where(keep, yv, 0.0), torch.where(keep, hy, 0.0)
        if self.pairs == MEMORY:  # the oldest pair leaves: every position moves one down
            for name in ("S", "HY"):  # one at a time: a single transient copy
                setattr(self, name, getattr(self, name).roll(-1, 1))
            self.SY, self.YHY = self.SY.roll((-1, -1), (1, 2)), self.YHY.roll((-1, -1), (1, 2))
        else:
            self.pairs += 1
        j = self.pairs - 1
        self.S[:, j], self.HY[:, j] = s, hy
        self.SY[:, :, j] = torch.bmm(self.S, yv.unsqueeze(-1)).squeeze(-1)  # s_k·y_j: the newest column
        self.YHY[:, j, :] = self.YHY[:, :, j] = torch.bmm(self.HY, yv.unsqueeze(-1)).squeeze(-1)
        self.gamma = torch.where(ok, sy / torch.where(ok, yhy, 1.0), self.gamma)


def logits(X: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """(N, A, C) logits of heads ``theta`` (A, C, D) float64, computed in X's dtype: one pass over X.
    A one-row head (two classes, module docstring) has one logit, class 1's against a fixed zero.
    D is d + 1 (bias last) or d (no bias), read off the shapes."""
    A, C, D = theta.shape
    d = X.shape[1]
    W = theta[..., :d].to(X.dtype).reshape(A * C, d)
    if D == d:  # no bias column
        return (X @ W.T).view(-1, A, C)
    b = theta[..., d].to(X.dtype).reshape(A * C)
    if A * C == 1:  # a matrix-vector product: a third faster than the (N×d)·(d×1) matmul
        return torch.addmv(b, X, W[0]).view(-1, 1, 1)
    return (X @ W.T).view(-1, A, C).add_(b.view(A, C))


def row_terms(z: torch.Tensor) -> torch.Tensor:
    """What the gradient and the loss need of every row at logits ``z`` (N, A, C): the
    log-probabilities, or, for one logit, the logit itself (its sigmoid is the probability)."""
    return z if z.shape[-1] == 1 else log_softmax(z)


def gradient(pb: Problem, terms: torch.Tensor, theta: torch.Tensor,
             lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """∇f (A, C, D) and the weighted CE (A,) per head from the rows' ``row_terms`` (N, A, C)
    at θ: one pass over X."""
    N, A, C = terms.shape
    d = pb.X.shape[1]
    w = pb.w.view(N, 1, 1)
    if C == 1:  # one logit u: ∂CE/∂u = σ(u) − y, CE = softplus(u) − y·u = softplus((1 − 2y)·u)
        R = torch.sigmoid(terms).sub_(pb.y_float).mul_(w)
        # softplus in float64: torch's float32 softplus is three times slower on a CPU
        ce = (torch.nn.functional.softplus((terms * pb.sign).to(torch.float64)) * pb.w64).sum(0).view(A)
    else:
        at_y = pb.y.view(N, 1, 1).expand(N, A, 1)
        R = terms.exp().scatter_add_(-1, at_y, torch.full_like(terms[..., :1], -1.0)).mul_(w)
        ce = -(terms.gather(-1, at_y).squeeze(-1) * pb.w.unsqueeze(1)).sum(0, dtype=torch.float64)
    gW = (R.view(N, A * C).T @ pb.X).view(A, C, d).to(torch.float64)
    g = gW + lam.view(A, 1, 1) * theta[..., :d]
    if pb.bias:
        g = torch.cat([g, R.sum(0, dtype=torch.float64).unsqueeze(-1)], dim=-1)
    return g, ce


class _Line:
    """φ_g(t) = f_g(θ_g + t p_g) along every head's direction, in logit space."""

    def __init__(self, pb: Problem, h: _Heads, p: torch.Tensor, zp: torch.Tensor) -> None:
        N, d = zp.shape[0], pb.X.shape[1]
        P = p[..., :d]
        self.pb, self.z, self.zp = pb, h.z, zp
        # λ⟨W,P⟩ and λ‖P‖²: the penalty's part of φ' and φ''
        self.ridge = (h.lam * (h.theta[..., :d] * P).sum((1, 2)), h.lam * (P * P).sum((1, 2)))
        if zp.shape[-1] == 1:  # one logit: w·zp and w·zp² serve every evaluation
            self.wzp = zp * pb.w.view(N, 1, 1)
            self.wzp2 = self.wzp * zp
            self.zp_y = (self.wzp * pb.y_float).sum((0, 2), dtype=torch.float64)
        else:
            self.zp_y = zp.gather(-1, pb.y.view(N, 1, 1).expand(N, zp.shape[1], 1)).squeeze(-1)

    def slope(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """φ'(t), φ''(t) and the rows' ``row_terms`` at θ + t p:
        φ'(t) = Σ_i w_i (p_i(t) − e_{y_i})·zp_i + λ(⟨W,P⟩ + t‖P‖²), φ''(t) = Σ_i w_i Var_{p_i(t)}(zp_i) + λ‖P‖²;
        for one logit, p_i = σ(u_i) and Var = σ(1 − σ)·zp_i²."""
        z = torch.addcmul(self.z, self.zp, t.to(self.z.dtype).view(1, -1, 1))
        ridge = self.ridge[0] + t * self.ridge[1], self.ridge[1]
        if z.shape[-1] == 1:
            sig = torch.sigmoid(z)
            d1 = (sig * self.wzp).sum((0, 2), dtype=torch.float64) - self.zp_y + ridge[0]
            d2 = ((sig - sig * sig) * self.wzp2).sum((0, 2), dtype=torch.float64) + ridge[1]
            return d1, d2, z
        logp = log_softmax(z)
        pz = logp.exp().mul_(self.zp)
        mean = pz.sum(-1)
        second = pz.mul_(self.zp).sum(-1)
        w = self.pb.w.unsqueeze(1)
        d1 = ((mean - self.zp_y) * w).sum(0, dtype=torch.float64) + ridge[0]
        d2 = ((second - mean * mean) * w).sum(0, dtype=torch.float64) + ridge[1]
        return d1, d2, logp

    def search(self, t: torch.Tensor, slope0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per head a step t > 0 with |φ'(t)| ≤ CURVATURE·|φ'(0)|, from the first guess ``t``.

        φ is convex, so φ' increases: the bracket [lo, hi] around its root shrinks with
        every evaluation; Newton steps inside it, bisection (or doubling while hi is
        unbounded) when Newton would leave it. Every head is evaluated at every step
        (one batched evaluation); a head that is done keeps its t. Returns t, whether
        each head met the condition, and the rows' ``row_terms`` at the returned t.
        """
        lo, hi = torch.zeros_like(t), torch.full_like(t, float("inf"))
        target = CURVATURE * slope0.abs()
        for k in range(LINE_SEARCH_STEPS):
            d1, d2, terms = self.slope(t)
            done = (d1.abs() <= target) & torch.isfinite(d1)
            if k == LINE_SEARCH_STEPS - 1 or bool(done.all()):
                break  # before t moves on: the row terms belong to the returned t
            lo, hi = torch.where(d1 < 0, t, lo), torch.where(d1 > 0, t, hi)
            newton = t - d1 / d2
            inside = torch.isfinite(newton) & (newton > lo) & (newton < hi)
            fallback = torch.where(torch.isfinite(hi), (lo + hi) / 2, 2 * torch.maximum(t, lo))
            t = torch.where(done, t, torch.where(inside, newton, fallback))
        return t, done, terms

    def newton_from_zero(self, slope0: torch.Tensor) -> torch.Tensor:
        """−φ'(0)/φ''(0): the first guess where the direction has no natural unit step."""
        _, d2, _ = self.slope(torch.zeros_like(slope0))
        guess = -slope0 / d2
        return torch.where(torch.isfinite(guess) & (guess > 0), guess, torch.ones_like(guess))


def lbfgs(pb: Problem, lam: torch.Tensor, tol: float, max_iter: int, precondition: bool = True,
          on_iteration: Callable[[int], None] | None = None) -> Solution:
    """Minimise f_g for every weight decay in ``lam`` (G,) from θ = 0 (module docstring);
    ``on_iteration(1)`` after every iteration (progress)."""
    G = lam.shape[0]
    h = _Heads(pb, lam / 2 if pb.class_rows == 1 else lam, precondition)  # (λ/2)/2·‖v‖² = λ/2·‖[−v/2, v/2]‖²
    out = Solution(theta=h.theta.clone(), iterations=[0] * G, status=[NOT_CONVERGED] * G,
                   grad_max=[float("nan")] * G, loss=[[] for _ in range(G)], ce=[[] for _ in range(G)],
                   grad_trace=[[] for _ in range(G)])
    h.keep(_record(out, h, tol, torch.zeros(G, dtype=torch.bool, device=pb.X.device), 0, max_iter))
    for it in range(1, max_iter + 1):
        if not h.ids:
            break
        p = h.direction()
        slope0 = (p * h.g).sum((1, 2))
        uphill = ~(slope0 < 0)  # stale curvature pairs: restart those heads from steepest descent
        if bool(uphill.any()):
            h.forget(uphill)
            p = torch.where(uphill.view(-1, 1, 1), -h.g, p)
            slope0 = torch.where(uphill, -(h.g * h.g).sum((1, 2)), slope0)
        if it % REFRESH_EVERY == 0:  # the updated logits drift by rounding: recompute them at θ
            h.z = logits(pb.X, h.theta)
        zp = logits(pb.X, p)
        line = _Line(pb, h, p, zp)
        t, found, terms = line.search(torch.ones_like(slope0) if it > 1 else line.newton_from_zero(slope0), slope0)
        if not bool(found.all()):  # those heads stall where they are, and stop below
            t = torch.where(found, t, 0.0)
            terms = torch.where(found.view(1, -1, 1), terms, h.terms)
        step = t.view(-1, 1, 1) * p
        h.theta, h.terms = h.theta + step, terms
        if pb.class_rows == 1:  # one logit: the row terms are the logits at the accepted t
            h.z = terms
        else:
            h.z.add_(zp.mul_(t.to(zp.dtype).view(1, -1, 1)))
        g_old = h.g
        h.g, h.ce = gradient(pb, h.terms, h.theta, h.lam)
        h.remember(step, h.g - g_old)
        if on_iteration is not None:
            on_iteration(1)
        h.keep(_record(out, h, tol, ~found, it, max_iter))
    if pb.class_rows == 1:  # the two-row head of the one-logit solution (module docstring)
        out.theta = torch.cat([-out.theta / 2, out.theta / 2], dim=1)
    return out


def _record(out: Solution, h: _Heads, tol: float, stalled: torch.Tensor, it: int, max_iter: int) -> list[bool]:
    """Trace iteration ``it`` of the active heads; store the heads that stop now and return
    which heads go on."""
    gmax, f = h.g.flatten(1).abs().amax(-1), h.loss
    finite = torch.isfinite(f) & torch.isfinite(gmax)
    converged = finite & (gmax <= tol)
    stop = converged | ~finite | stalled | (it >= max_iter)
    # one transfer from the device per iteration
    flags = [v.to(torch.float64) for v in (converged, finite, stop)]
    loss, ce, gm, conv, fin, stops = torch.stack([f, h.ce, gmax, *flags]).tolist()
    for k, g in enumerate(h.ids):
        if it > 0:
            out.loss[g].append(loss[k])
            out.ce[g].append(ce[k])
            out.grad_trace[g].append(gm[k])
        if stops[k]:
            out.theta[g] = h.theta[k]
            out.iterations[g], out.grad_max[g] = it, gm[k]
            out.status[g] = CONVERGED if conv[k] else (NOT_CONVERGED if fin[k] else DIVERGED)
    return [not s for s in stops]
