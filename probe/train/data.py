"""What a cohort's heads share: the splits, the domain-balanced batch stream, one logits pass.

Features are read from the shared feature matrix and preprocessed on demand (a
batch, or a chunk at evaluation), so the matrix is never copied whole: peak
memory stays close to the matrix itself at CelebA scale.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from base.errors import UserError
from features.store import SPLITS, FeatureSet
from probe import moments
from probe.preprocessing import Preprocessor
from probe.records.fitset import FitSet
from probe.train.settings import Settings

#: the preprocessed training rows, and their Gram matrix (for CMA), are computed once
#: per cohort and batches gathered from them when each is at most this large: a
#: gather instead of preprocessing and a (B×d̃)·(d̃×B) matmul at every step
CACHE_BYTES = 256 * 1024**2
#: on a CPU, splits are preprocessed for scoring in blocks of at most this many bytes: a
#: larger fresh allocation is beyond malloc's mmap threshold and page-faulted in each time
CPU_BLOCK_BYTES = 4 * 1024**2


@dataclass
class Split:
    """One split's rows, indexing the shared feature matrix."""

    source: torch.Tensor  # the full (N, d) feature matrix, shared by all splits
    rows: torch.Tensor  # (n,) indices into source
    y: torch.Tensor
    group: torch.Tensor
    domain: torch.Tensor
    pre: Preprocessor
    dtype: torch.dtype
    bias: bool = True  # heads have a bias column
    _mean_sq: float | None = field(default=None, init=False, repr=False)

    def X(self, idx: torch.Tensor | None = None) -> torch.Tensor:
        rows = self.rows if idx is None else self.rows[idx]
        n = len(rows)
        if idx is None and n and int(rows[-1]) - int(rows[0]) == n - 1:
            # the split is one block of the matrix (every row of an estimator's training set):
            # a view, transformed out of place, and no copy at all when the kinds are the identity
            start = int(rows[0])
            return self.pre.transform(self.source[start: start + n].to(self.dtype), owned=False)
        return self.pre.transform(self.source.index_select(0, rows).to(self.dtype), owned=True)

    def predict(self, theta: torch.Tensor, X: torch.Tensor | None = None) -> torch.Tensor:
        """(G, n) predicted classes, in row chunks sized to the grid."""
        return self.score(theta, X)[0]

    def score(self, theta: torch.Tensor, X: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(G, n) predicted classes, (G, n) the probability each head gives its prediction,
        and (G,) each head's mean cross-entropy on the split's rows."""
        G, C, _ = theta.shape
        chunk = max(256, min(16384, (64 * 1024**2) // max(1, G * C * theta.element_size())))
        if X is None and not self.source.is_cuda:  # gathered blocks that stay cached (and unfaulted)
            row_bytes = self.source.shape[1] * max(self.source.element_size(), self.dtype.itemsize)
            chunk = min(chunk, max(256, CPU_BLOCK_BYTES // row_bytes))
        n = len(self.rows)
        preds, confs = [], []
        nll = torch.zeros(G, dtype=torch.float64, device=theta.device)
        for i in range(0, n, chunk):
            Xi = X[i: i + chunk] if X is not None else self.X(torch.arange(i, min(i + chunk, n),
                                                                           device=self.rows.device))
            logp = moments.log_softmax(moments.logits(theta, Xi, self.bias))
            top, pred = logp.max(-1)
            yi = self.y[i: i + chunk].view(1, -1, 1).expand(G, -1, 1)
            nll -= logp.gather(-1, yi).sum((1, 2)).to(torch.float64)
            preds.append(pred)
            confs.append(top.exp_())
        if not preds:
            empty = torch.zeros(G, 0, device=theta.device)
            return empty.long(), empty.to(theta.dtype), torch.full((G,), float("nan"), device=theta.device)
        return torch.cat(preds, dim=-1), torch.cat(confs, dim=-1), nll / n

    def mean_sq_norm(self, chunk: int = 16384) -> float:
        """Mean ‖x̃‖² over the rows, preprocessed, the bias column (if any) included (computed once)."""
        if self._mean_sq is None:
            total = 0.0
            for i in range(0, len(self.rows), chunk):
                Xi = self.X(torch.arange(i, min(i + chunk, len(self.rows)), device=self.rows.device))
                total += float((Xi.double() ** 2).sum())
            self._mean_sq = total / max(1, len(self.rows)) + (1.0 if self.bias else 0.0)
        return self._mean_sq


def validate_for_fit(fs: FeatureSet) -> None:
    """The checks a fit needs beyond a readable file; each a one-line UserError."""
    if fs.num_classes < 2:
        # Every head would score 100% on every group: a number that means nothing.
        raise UserError(f"{fs.path}: has a single class ({fs.class_names[0]!r}); a classifier needs two or more")
    for name, code in SPLITS.items():
        if not (fs.split == code).any():
            raise UserError(f"{fs.path}: the {name} split has no rows; every split needs rows to fit and select")
    train = fs.split == SPLITS["train"]
    for c, cname in enumerate(fs.class_names):
        if not (train & (fs.y == c)).any():
            raise UserError(f"{fs.path}: class {cname!r} has no training rows; drop it or add rows")
    if (fs.group[train] < 0).all():  # the regime hides the training rows' groups: nothing to check
        return
    for g, gname in enumerate(fs.group_names):
        if not (train & (fs.group == g)).any():
            raise UserError(f"{fs.path}: group {gname!r} has no training rows; group metrics and penalties need it")


def prepare(fs: FitSet, pre: Preprocessor, settings: Settings) -> dict[str, Split]:
    """Fit the cohort's preprocessing on train; index every split into the shared matrix."""
    dev, dt = settings.device, settings.dtype
    source = torch.as_tensor(fs.features, device=dev)  # no copy on the CPU
    train_rows = torch.as_tensor(np.flatnonzero(fs.split == SPLITS["train"]), device=dev)
    pre.fit_rows(source, train_rows, torch.as_tensor(fs.y, device=dev), torch.as_tensor(fs.a, device=dev), dt)
    dom_col = fs.domain
    splits = {}
    for name, code in SPLITS.items():
        rows = np.flatnonzero(fs.split == code)
        splits[name] = Split(source, torch.as_tensor(rows, device=dev), torch.as_tensor(fs.y[rows], device=dev),
                             torch.as_tensor(fs.group[rows], device=dev),
                             torch.as_tensor(np.maximum(dom_col[rows], 0), device=dev), pre, dt, settings.bias)
    return splits


class SplitCache:
    """Prepared splits by everything that determines them, shared by the chunks and the
    methods of one fit: a preprocessing (an exact PCA at CelebA scale takes a while) is
    fitted once however many seeds and methods use it."""

    def __init__(self) -> None:
        self._store: dict[tuple, dict[str, Split]] = {}

    def get(self, fs: FitSet, preprocess: str, settings: Settings, seed: int | None = None) -> dict[str, Split]:
        """The splits of a cohort of ``seed`` (which only a preprocessing that draws from it reads)."""
        pre = Preprocessor(preprocess, seed=seed, **settings.options)
        # the preprocessing's own key (its chain, every knob its kinds declare, the seed it
        # draws from) and what else shapes a split: dtype, device, domains and the bias column
        key = (pre.key(), str(settings.dtype), str(settings.device), fs.domain_source, settings.bias)
        if key not in self._store:
            self._store[key] = prepare(fs, pre, settings)
        return self._store[key]


class BalancedSampler:
    """Domain-balanced minibatches: each batch holds ~B/K rows of every domain
    (the first B mod K domains one more), each domain cycled through in a fresh
    random order per pass. The stream depends only on (seed, batch size, domains)."""

    def __init__(self, domains: np.ndarray, num_domains: int, batch_size: int, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.pools = [p for p in (np.flatnonzero(domains == k) for k in range(num_domains)) if len(p)]
        self.full = batch_size <= 0 or batch_size >= len(domains)
        self.all = np.arange(len(domains))
        k = len(self.pools)
        self.sizes = [batch_size // k + (1 if i < batch_size % k else 0) for i in range(k)]
        self.orders = [self.rng.permutation(p) for p in self.pools]
        self.pos = [0] * k

    def next(self) -> np.ndarray:
        if self.full:
            return self.all
        parts = []
        for i, size in enumerate(self.sizes):
            while size > 0:
                order = self.orders[i]
                chunk = order[self.pos[i]: self.pos[i] + size]
                parts.append(chunk)
                size -= len(chunk)
                self.pos[i] += len(chunk)
                if self.pos[i] >= len(order):
                    self.orders[i] = self.rng.permutation(self.pools[i])
                    self.pos[i] = 0
        return np.concatenate(parts)


class ShuffledSampler:
    """Uniformly shuffled batches in epochs (a fresh permutation of the training rows each
    epoch, its last batch the remainder), as a DataLoader with shuffle=True gives them.
    The stream depends only on (seed, batch size, number of rows)."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.n, self.size = n, batch_size
        self.full = batch_size <= 0 or batch_size >= n
        self.all = np.arange(n)
        self.order, self.pos = self.rng.permutation(n), 0

    def next(self) -> np.ndarray:
        if self.full:
            return self.all
        if self.pos >= self.n:
            self.order, self.pos = self.rng.permutation(self.n), 0
        out = self.order[self.pos: self.pos + self.size]
        self.pos += len(out)
        return out


@dataclass
class Batch:
    """One minibatch, with what every head of the cohort shares about it."""

    X: torch.Tensor  # (B, d) preprocessed features
    y: torch.Tensor  # (B,) int64
    domains: torch.Tensor  # (B,) ids in 0..K-1
    num_domains: int  # K
    domain_share: torch.Tensor  # (K,) each domain's share of the training rows
    W: torch.Tensor | None = None  # (B, K') 1/n_e weights over the present domains
    ids: torch.Tensor | None = None  # (K',) ids of the present domains
    seed: int = 0  # the stream's seed and this batch's step: randomness a method draws per step
    step: int = 0
    bias: bool = True  # the heads have a bias column (X̃ = [X, 1]) or not (X̃ = X)

    def __post_init__(self) -> None:
        if self.W is None:
            self.W = moments.domain_weights(self.domains, self.num_domains, dtype=self.X.dtype)
        if self.ids is None:
            self.ids = moments.present_domains(self.domains, self.num_domains)
        self._design: torch.Tensor | None = None

    @property
    def design(self) -> torch.Tensor:
        """The rows the heads are linear in (``moments.design``), built once per batch."""
        if self._design is None:
            self._design = moments.design(self.X, self.bias)
        return self._design


@dataclass
class Forward:
    """One logits pass of the grid, and what the closed-form penalties need from it."""

    z: torch.Tensor  # (G, B, C) logits
    p: torch.Tensor  # (G, B, C) probabilities
    residual: torch.Tensor  # (G, B, C) p - onehot(y): per-sample dCE/dlogits
    losses: torch.Tensor  # (G, K') per-domain mean CE

    def domain_gradients(self, batch: Batch) -> torch.Tensor:
        """(G, K', C, d̃): the gradient of each present domain's mean CE, Σ_i W_ie r_i x̃_iᵀ."""
        return moments.domain_sums(self.residual, batch.design, batch.W)


def forward(theta: torch.Tensor, batch: Batch) -> Forward:
    z = moments.logits(theta, batch.X, batch.bias)
    logp = moments.log_softmax(z)
    nll = -logp.gather(-1, batch.y.view(1, -1, 1).expand(z.shape[0], -1, 1)).squeeze(-1)
    p = logp.exp()
    residual = p.scatter_add(-1, batch.y.view(1, -1, 1).expand(z.shape[0], -1, 1),
                             torch.full_like(p[..., :1], -1.0))
    return Forward(z, p, residual, nll @ batch.W)


def gram(X: torch.Tensor, bias: bool = True, chunk: int = 4096) -> torch.Tensor:
    """X̃X̃ᵀ (the bias column included when there is one), built in row blocks."""
    out = torch.empty(X.shape[0], X.shape[0], dtype=X.dtype, device=X.device)
    for i in range(0, X.shape[0], chunk):
        out[i: i + chunk] = X[i: i + chunk] @ X.T + 1 if bias else X[i: i + chunk] @ X.T
    return out


class Stream:
    """The cohort's batches: rows, features, labels, domain weights and (for the
    kernel penalties) the Gram matrix, computed once per step for every head.

    When they are small (``CACHE_BYTES``), the preprocessed training rows and their
    Gram matrix are computed once and batches read from them; a full batch is
    built once. At CelebA scale neither is cached, so memory stays near the
    feature matrix itself.
    """

    def __init__(self, tr: Split, K: int, share: torch.Tensor, settings: Settings, seed: int,
                 needs_gram: bool) -> None:
        self.tr, self.K, self.share = tr, K, share
        if settings.batches == "shuffled":
            self.sampler: BalancedSampler | ShuffledSampler = ShuffledSampler(len(tr.rows), settings.batch_size, seed)
        else:
            self.sampler = BalancedSampler(tr.domain.cpu().numpy(), K, settings.batch_size, seed)
        n = len(tr.rows)
        d = tr.pre.out_dim(tr.source.shape[1])
        item = torch.empty((), dtype=settings.dtype).element_size()
        self.X_all = tr.X() if self.sampler.full or n * d * item <= CACHE_BYTES else None
        self.gram_all = None
        if needs_gram and n * n * item <= CACHE_BYTES:
            self.gram_all = gram(self.X_all if self.X_all is not None else tr.X(), tr.bias)
        self.full: tuple[Batch, torch.Tensor | None] | None = None
        self.seed, self.step = seed, -1

    def next(self) -> tuple[Batch, torch.Tensor | None]:
        tr = self.tr
        self.step += 1
        if self.sampler.full:  # the same rows every step
            if self.full is None:
                self.full = (Batch(self.X_all, tr.y, tr.domain, self.K, self.share, seed=self.seed, bias=tr.bias),
                             self.gram_all)
            self.full[0].step = self.step
            return self.full
        idx = torch.as_tensor(self.sampler.next(), device=tr.rows.device)
        # rows grouped by domain: per-domain sums then read slices of the batch, not copies
        # (the order of rows within a batch changes no loss or penalty)
        idx = idx[torch.argsort(tr.domain[idx], stable=True)]
        X = self.X_all.index_select(0, idx) if self.X_all is not None else tr.X(idx)
        batch = Batch(X, tr.y[idx], tr.domain[idx], self.K, self.share, seed=self.seed, step=self.step, bias=tr.bias)
        g = None
        if self.gram_all is not None:
            n = self.gram_all.shape[0]
            g = self.gram_all.view(-1).take(idx.unsqueeze(1) * n + idx.unsqueeze(0))
        return batch, g
