"""Does each evaluation split, and each of its groups, lie near the convex hull of the
training domains? Every bound of the CMA paper assumes it (Assumption 2: the target is a
mixture of the sources); this measures it on the features themselves.

Method: mixture-proportion estimation by moment matching, i.e. kernel mean matching
(Huang et al., NIPS 2006) with one weight per training domain constrained to the
simplex, under the degree-2 polynomial kernel whose feature map is the mean and the
second moment. Concretely:

* features are z-scored with the training rows' mean and (sample) std;
* a set of rows is summarised by ``φ̄ = [E z / √d ; vec(E z zᵀ) / d]``: its mean and its
  (uncentred) second moment, each block scaled to root-mean-square per entry so the d²
  second-moment entries do not swamp the d mean entries;
* the weights ``w* = argmin_{w ∈ Δ} ‖Σ_k w_k φ̄_k − φ̄_t‖²`` over the simplex Δ of the K
  training domains: a K-dimensional convex QP, solved by accelerated projected gradient
  (FISTA, Euclidean projection onto the simplex by sorting) to a step below 1e-12;
* ``residual r = ‖Σ_k w*_k φ̄_k − φ̄_t‖``; ``distance D = ‖φ̄_t − φ̄_train‖`` from the pooled
  training rows (a point of the hull, so r ≤ D); ``relative = r / D``;
* ``noise ε``: the r an exact mixture would show from sampling alone,
  ``ε² = tr Cov_t(φ)/n_t + Σ_k w_k² tr Cov_k(φ)/n_k`` (``tr Cov(φ) = E‖φ‖² − ‖E φ‖²``,
  ``‖φ(z)‖² = ‖z‖²/d + ‖z‖⁴/d²``).

Verdict: *near the hull* when ``r ≤ 2ε`` (indistinguishable from a mixture at this
sample size) or ``relative ≤ threshold`` (default 0.2: at least 80% of the set's departure
from the pooled training rows is explained by reweighting the training domains);
otherwise *outside*. Cost: one pass over the rows, ``O(N d²)`` in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from base.device import available_memory
from base.errors import UserError
from features.store import SPLITS, FeatureSet
from probe.records.fitset import FitSet

#: the default relative-residual threshold of the verdict
THRESHOLD = 0.2
#: rows z-scored and accumulated at a time (fewer on wide features: a block of at most CHUNK_BYTES)
CHUNK_ROWS = 8192
CHUNK_BYTES = 64 * 1024**2
#: fraction of the machine's available memory the check may plan to use (as `probe fit` plans)
MEMORY_FRACTION = 0.5


@dataclass
class HullFit:
    """One evaluation split (``group`` None) or one of its groups, against the training domains."""

    split: str
    group: str | None
    n: int
    weights: dict[str, float]  # training domain -> mixture weight (on the simplex)
    residual: float
    distance: float
    noise: float
    near: bool

    @property
    def relative(self) -> float:
        return self.residual / self.distance if self.distance > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"split": self.split, "group": self.group, "n": self.n, "weights": self.weights,
                "residual": self.residual, "distance": self.distance, "relative": self.relative,
                "noise": self.noise, "near": self.near}


class _Moments:
    """Running sums of one set of rows: n, Σz, Σzzᵀ, Σ‖φ(z)‖²."""

    def __init__(self, d: int) -> None:
        self.n, self.s1, self.s2, self.sq = 0, np.zeros(d), np.zeros((d, d)), 0.0

    def add(self, z: np.ndarray) -> None:
        d = z.shape[1]
        norms = (z * z).sum(1)
        self.n += len(z)
        self.s1 += z.sum(0)
        self.s2 += z.T @ z
        self.sq += float((norms / d + norms**2 / d**2).sum())

    @staticmethod
    def total(parts: list[_Moments]) -> _Moments:
        out = _Moments(len(parts[0].s1))
        for m in parts:
            out.n, out.s1, out.s2, out.sq = out.n + m.n, out.s1 + m.s1, out.s2 + m.s2, out.sq + m.sq
        return out

    def phi(self) -> np.ndarray:
        d = len(self.s1)
        return np.concatenate([self.s1 / self.n / math.sqrt(d), (self.s2 / self.n).ravel() / d])

    def spread(self) -> float:
        """tr Cov(φ) over the rows."""
        return max(0.0, self.sq / self.n - float(self.phi() @ self.phi()))


def project_simplex(v: np.ndarray) -> np.ndarray:
    """The Euclidean projection of ``v`` onto {w ≥ 0, Σw = 1} (sort-based; Held et al. 1974)."""
    u = np.sort(v)[::-1]
    css = np.cumsum(u) - 1.0
    k = np.nonzero(u - css / np.arange(1, len(v) + 1) > 0)[0][-1]
    return np.maximum(v - css[k] / (k + 1), 0.0)


def simplex_least_squares(A: np.ndarray, b: np.ndarray, tol: float = 1e-12, max_iter: int = 100_000) -> np.ndarray:
    """``argmin_{w ∈ Δ} wᵀAw − 2bᵀw`` (A symmetric PSD) by FISTA with simplex projection."""
    K = len(b)
    L = 2.0 * max(float(np.linalg.eigvalsh(A).max()), 1e-300)
    w = y = np.full(K, 1.0 / K)
    t = 1.0
    for _ in range(max_iter):
        w_next = project_simplex(y - (2.0 * (A @ y) - 2.0 * b) / L)
        t_next = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
        y = w_next + ((t - 1.0) / t_next) * (w_next - w)
        step = float(np.abs(w_next - w).max())
        w, t = w_next, t_next
        if step < tol:
            break
    return w


def _accumulate(fs: FeatureSet, train_dom: np.ndarray, splits: tuple[str, ...], chunk: int
                ) -> tuple[dict[int, _Moments], dict[tuple[str, int], _Moments]]:
    """Moments of every training domain and of every group of each evaluation split."""
    train = np.flatnonzero(fs.split == SPLITS["train"])
    X = fs.features
    mean = np.zeros(X.shape[1])
    sq = np.zeros(X.shape[1])
    for i in range(0, len(train), chunk):
        block = X[train[i:i + chunk]].astype(np.float64)
        mean += block.sum(0)
        sq += (block * block).sum(0)
    mean /= len(train)
    std = np.sqrt(np.maximum(sq - len(train) * mean * mean, 0) / max(len(train) - 1, 1))
    std = np.where(std > 1e-6, std, 1.0)
    d = X.shape[1]
    dom_sets = {int(k): _Moments(d) for k in np.unique(train_dom)}
    grp_sets: dict[tuple[str, int], _Moments] = {}
    for name in ("train", *splits):
        rows = np.flatnonzero(fs.split == SPLITS[name])
        labels = train_dom if name == "train" else fs.group[rows]
        for i in range(0, len(rows), chunk):
            z = (X[rows[i:i + chunk]].astype(np.float64) - mean) / std
            lab = labels[i:i + chunk]
            for k in np.unique(lab):
                target = dom_sets[int(k)] if name == "train" else grp_sets.setdefault((name, int(k)), _Moments(d))
                target.add(z[lab == k])
    return dom_sets, grp_sets


def _fit(target: _Moments, domains: list[_Moments], pooled: np.ndarray) -> tuple[np.ndarray, float, float, float]:
    """(weights, residual, distance, noise) of one set against the training domains."""
    U = np.stack([m.phi() - pooled for m in domains])  # centred at the pooled rows: better conditioned
    v = target.phi() - pooled
    w = simplex_least_squares(U @ U.T, U @ v)
    residual = float(np.linalg.norm(w @ U - v))
    noise2 = target.spread() / target.n + sum(wk * wk * m.spread() / m.n for wk, m in zip(w, domains, strict=True))
    return w, residual, float(np.linalg.norm(v)), math.sqrt(noise2)


def memory_needed(fs: FitSet, train_dom: np.ndarray, splits: tuple[str, ...], chunk: int) -> int:
    """Bytes the check holds at its peak: a d×d float64 second moment per training domain,
    per evaluation group and per whole split, the stacked mixture problem (one d² row per
    domain) with a few d² temporaries, and a block of rows."""
    d = fs.features.shape[1]
    K = len(np.unique(train_dom))
    sets = K + 1 + sum(len(np.unique(fs.group[fs.split == SPLITS[name]])) + 1 for name in splits)
    return 8 * d * d * (sets + K + 4) + 3 * 8 * min(chunk, len(fs.y)) * d


def hull_check(fs: FitSet, splits: tuple[str, ...] = ("val", "test"), threshold: float = THRESHOLD,
               chunk: int = CHUNK_ROWS, memory_bytes: int | None = None) -> list[HullFit]:
    """For each split in ``splits`` (the whole split, then each of its groups with rows), the
    mixture of the training domains (the FitSet's) nearest its mean and second moment,
    and the verdict (module docstring). A split named twice is checked once. ``memory_bytes``:
    what the check may use (default: half the available memory); a file that needs more is
    refused before anything is allocated."""
    splits = tuple(dict.fromkeys(splits))  # val,val is val: counted twice it would halve its noise
    if not splits:
        raise UserError("`splits`: no split given; choose from val, test")
    for name in splits:
        if name not in SPLITS or name == "train":
            raise UserError(f"`splits`: {name!r} is not an evaluation split; choose from val, test")
    if not (isinstance(threshold, (int, float)) and 0 <= threshold <= 1):
        raise UserError(f"`threshold` {threshold!r} must be a number in [0, 1]")
    train_dom = fs.train_domains()
    if len(train_dom) == 0:
        raise UserError(f"{fs.path}: the train split has no rows; the hull of the training domains is empty")
    chunk = max(1, min(chunk, CHUNK_BYTES // (8 * fs.features.shape[1])))
    need = memory_needed(fs, train_dom, splits, chunk)
    budget = memory_bytes if memory_bytes is not None else int(MEMORY_FRACTION * available_memory("cpu"))
    if need > budget:
        raise UserError(f"{fs.path}: the hull check compares second moments (d×d each) over its "
                        f"{fs.features.shape[1]} feature columns and needs about {need / 2**30:.1f} GiB, more than "
                        f"the {budget / 2**30:.1f} GiB it may use here; run it where more memory is free, check "
                        "fewer `splits`, or extract the features with a smaller encoder")
    dom_sets, grp_sets = _accumulate(fs, train_dom, splits, chunk)
    names = fs.domain_names
    ids = sorted(dom_sets)
    domains = [dom_sets[k] for k in ids]
    pooled = _Moments.total(domains).phi()
    out = []
    for name in splits:
        groups = sorted(k for s, k in grp_sets if s == name)
        if not groups:
            continue
        sets = [(None, _Moments.total([grp_sets[(name, g)] for g in groups]))]
        sets += [(fs.group_names[g], grp_sets[(name, g)]) for g in groups]
        for group, target in sets:
            w, r, dist, eps = _fit(target, domains, pooled)
            near = r <= 2 * eps or (dist > 0 and r / dist <= threshold) or dist == 0
            out.append(HullFit(split=name, group=group, n=target.n,
                               weights={names[k] if k < len(names) else str(k): float(x) for k, x in zip(ids, w,
                                                                                                         strict=True)},
                               residual=r, distance=dist, noise=eps, near=bool(near)))
    return out
