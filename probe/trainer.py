"""Fit a whole grid of linear heads as one batched computation.

Configurations that share a batch stream and features (same seed and
preprocessing) form a cohort: their heads are stacked as ``(G, C, d+1)`` with
per-head hyperparameter tensors ``(G,)`` and trained together, so the batch,
its domain weights, its Gram/kernel matrix and every matmul are shared. Cohorts
run one after another; a cohort too large for the device's memory is split into
chunks of heads (``plan``), each run over the same batch stream.

A head's result does not depend on which other heads share its cohort or chunk:
batches depend only on (seed, batch size, data), heads never interact, and
every per-head quantity is computed row-wise from that head's parameters.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from base.errors import UserError
from features.store import SPLITS, FeatureSet
from probe import moments
from probe.metrics import correct_by_group, group_sizes, metrics_from_counts
from probe.objectives import CE_WEIGHTINGS, OBJECTIVES, Batch, Objective
from probe.optim import BatchedOptimizer
from probe.preprocess import Preprocessor

DOMAIN_COLUMNS = ("group", "a", "y")
#: settings shared by every head of a cohort (the rest vary per head)
COHORT_KEYS = ("seed", "preprocess")
#: fraction of the free device memory a chunk of heads may plan to use
MEMORY_FRACTION = 0.5
#: the preprocessed training rows, and their Gram matrix (for CMA), are computed once
#: per cohort and batches gathered from them when each is at most this large: a
#: gather instead of preprocessing and a (B×d̃)·(d̃×B) matmul at every step
CACHE_BYTES = 256 * 1024**2


@dataclass
class Settings:
    """Everything about a fit that is not a per-head hyperparameter."""

    steps: int = 1000
    batch_size: int = 512  # rows per domain-balanced batch; 0 or >= train rows: full batch
    optimizer: str = "adam"  # or "sgd" (momentum 0.9)
    eval_every: int = 50
    patience: int = 0  # evaluations without improvement before a head stops; 0: never
    domain: str = "group"  # column giving the penalties' domains: group, a or y
    select: str = "val_wga"  # or "val_acc": the checkpoint and model-selection score
    normalize: str | None = None  # CMA scaling (probe.moments): None or "dC"
    hessian_method: str = "auto"
    pca_dim: int = 64
    ce_weighting: str | None = None  # "pooled" or "domain"; None: each method's default (probe.objectives)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    max_heads: int | None = None  # cap on heads per chunk (None: from the memory estimate)
    memory_bytes: int | None = None  # memory a chunk may use (None: a share of what is free)

    def __post_init__(self) -> None:
        checks = {
            "steps": self.steps >= 1, "batch_size": self.batch_size >= 0, "eval_every": self.eval_every >= 1,
            "patience": self.patience >= 0, "pca_dim": self.pca_dim >= 1,
            "optimizer": self.optimizer in ("adam", "sgd"), "domain": self.domain in DOMAIN_COLUMNS,
            "select": self.select in ("val_wga", "val_acc"), "ce_weighting": self.ce_weighting in (None, *CE_WEIGHTINGS),
            "normalize": self.normalize in (None, "dC"),
            "hessian_method": self.hessian_method in moments.METHODS,
            "max_heads": self.max_heads is None or self.max_heads >= 1,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise UserError(f"--{bad[0].replace('_', '-')} {getattr(self, bad[0])!r} is not allowed; "
                            "see `probe fit --help`")

    def public(self) -> dict[str, Any]:
        """The settings as plain JSON values (for provenance)."""
        return {k: (str(v).replace("torch.", "") if isinstance(v, (torch.device, torch.dtype)) else v)
                for k, v in self.__dict__.items()}


@dataclass
class Split:
    """One split's rows. Features are read from the shared matrix and preprocessed
    on demand (a batch, or a chunk at evaluation), so the feature matrix is never
    copied whole: peak memory stays close to the matrix itself at CelebA scale."""

    source: torch.Tensor  # the full (N, d) feature matrix, shared by all splits
    rows: torch.Tensor  # (n,) indices into source
    y: torch.Tensor
    group: torch.Tensor
    domain: torch.Tensor
    pre: Preprocessor
    dtype: torch.dtype

    def X(self, idx: torch.Tensor | None = None) -> torch.Tensor:
        rows = self.rows if idx is None else self.rows[idx]
        return self.pre.transform(self.source.index_select(0, rows).to(self.dtype))

    def predict(self, theta: torch.Tensor, X: torch.Tensor | None = None) -> torch.Tensor:
        """(G, n) predicted classes, in row chunks sized to the grid."""
        G, C, _ = theta.shape
        chunk = max(256, min(16384, (64 * 1024**2) // max(1, G * C * theta.element_size())))
        n = len(self.rows)
        parts = []
        for i in range(0, n, chunk):
            Xi = X[i: i + chunk] if X is not None else self.X(torch.arange(i, min(i + chunk, n),
                                                                           device=self.rows.device))
            parts.append(moments.logits(theta, Xi).argmax(-1))
        return torch.cat(parts, dim=-1) if parts else torch.zeros(G, 0, dtype=torch.long, device=theta.device)


def validate_for_fit(fs: FeatureSet, domain: str) -> None:
    """The checks a fit needs beyond a readable file; each a one-line UserError."""
    if domain not in DOMAIN_COLUMNS:
        raise UserError(f"--domain {domain!r}: choose one of {', '.join(DOMAIN_COLUMNS)}")
    for name, code in SPLITS.items():
        if not (fs.split == code).any():
            raise UserError(f"{fs.path}: the {name} split has no rows; every split needs rows to fit and select")
    train = fs.split == SPLITS["train"]
    for c, cname in enumerate(fs.class_names):
        if not (train & (fs.y == c)).any():
            raise UserError(f"{fs.path}: class {cname!r} has no training rows; drop it or add rows")
    for g, gname in enumerate(fs.group_names):
        if not (train & (fs.group == g)).any():
            raise UserError(f"{fs.path}: group {gname!r} has no training rows; group metrics and penalties need it")
    if domain == "a" and (fs.a[train] < 0).any():
        raise UserError(f"{fs.path}: --domain a needs the spurious attribute on every training row (found -1)")


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


# ----------------------------------------------------------------------------- planning


def available_memory(device: torch.device) -> int:
    """Free memory on ``device`` in bytes: CUDA's free memory, else MemAvailable."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 4 * 1024**3


def memory_estimate(method: str, B: int, C: int, d: int, K: int, n_train: int, n_eval: int,
                    itemsize: int) -> tuple[int, int]:
    """(bytes shared by the chunk, bytes per head) of one training step plus an
    evaluation, a deliberate over-estimate (autograd keeps several copies)."""
    D = d + 1
    shared = 6 * B * B + 3 * B * D + n_eval * D  # Gram/kernel and the batch; val features
    if n_train * d * itemsize <= CACHE_BYTES:  # the caches of _Stream
        shared += n_train * d
    if OBJECTIVES[method].uses_gram and n_train * n_train * itemsize <= CACHE_BYTES:
        shared += n_train * n_train
    per = 10 * C * D + 16 * B * C  # params, grads, Adam moments, best; logits and their grads
    per += 2 * min(n_eval, 16384) * C  # evaluation logits
    if method == "cma":
        per += 6 * B * C * (C + 1) + (B * B if C > 3 else 0)  # Hessian kernel terms
    elif method == "fishr":
        per += 8 * K * C * D + 4 * K * B * C
    return shared * itemsize, per * itemsize


def plan(fs: FeatureSet, method: str, configs: list[dict[str, Any]], settings: Settings) -> list[tuple[dict, list[int]]]:
    """[(cohort settings, config indices)] in the order they are fitted: one entry per
    cohort, or several when a cohort's heads do not fit in memory at once."""
    cohorts: dict[tuple, list[int]] = {}
    for i, cfg in enumerate(configs):
        cohorts.setdefault(tuple(cfg[k] for k in COHORT_KEYS), []).append(i)
    n_train = int((fs.split == SPLITS["train"]).sum())
    B = n_train if settings.batch_size <= 0 else min(settings.batch_size, n_train)
    n_eval = int((fs.split == SPLITS["val"]).sum())
    K = int({"group": fs.group, "a": fs.a, "y": fs.y}[settings.domain].max()) + 1
    item = torch.empty((), dtype=settings.dtype).element_size()
    budget = settings.memory_bytes
    if budget is None:
        budget = int(MEMORY_FRACTION * available_memory(settings.device))
    out = []
    for key, idx in cohorts.items():
        d = fs.features.shape[1] if key[1] != "pca" else min(settings.pca_dim, fs.features.shape[1])
        shared, per = memory_estimate(method, B, fs.num_classes, d, K, n_train, n_eval, item)
        size = max(1, (budget - shared) // per)
        if settings.max_heads is not None:
            size = min(size, settings.max_heads)
        # Equal chunks: the same total work, less idle memory in the last one.
        n_chunks = math.ceil(len(idx) / size)
        step = math.ceil(len(idx) / n_chunks)
        for s in range(0, len(idx), step):
            out.append((dict(zip(COHORT_KEYS, key, strict=True)), idx[s: s + step]))
    return out


# ----------------------------------------------------------------------------- fitting


def fit_method(fs: FeatureSet, method: str, configs: list[dict[str, Any]], settings: Settings,
               on_step: Callable[[int], None] | None = None,
               results: list[dict[str, Any]] | None = None,
               chunks: list[tuple[dict[str, Any], list[int]]] | None = None) -> list[dict[str, Any]]:
    """Fit every configuration of one method; returns one result row per configuration,
    in the order of ``configs`` (run ids ``<method>-<index>``). ``chunks`` is
    ``plan(fs, method, configs, settings)`` when the caller has it already.

    Rows are appended to ``results`` as each cohort (chunk) finishes, so a caller
    that catches KeyboardInterrupt still holds every finished configuration;
    configurations of the interrupted chunk are left out.
    """
    if method not in OBJECTIVES:
        raise UserError(f"unknown method {method!r}; choose from {', '.join(sorted(OBJECTIVES))}")
    for cfg in configs:
        missing = [k for k in COHORT_KEYS if k not in cfg]
        if missing:
            raise ValueError(f"configuration {cfg} lacks {missing}")
    out = results if results is not None else []
    rows: dict[int, dict[str, Any]] = {}
    prepared: dict[tuple, tuple[dict[str, Split], Preprocessor]] = {}
    for cohort, chunk in chunks if chunks is not None else plan(fs, method, configs, settings):
        key = tuple(cohort[k] for k in COHORT_KEYS)
        if key not in prepared:  # chunks of one cohort share its preprocessing
            prepared = {key: prepare(fs, cohort, settings)}
        splits, pre = prepared[key]
        fitted = _fit_chunk(fs, method, [configs[i] for i in chunk], cohort, settings, splits, pre, on_step)
        for i, row in zip(chunk, fitted, strict=True):
            row["run_id"] = f"{method}-{i:04d}"
            rows[i] = row
            out.append(row)
    return [rows[i] for i in sorted(rows)]


def prepare(fs: FeatureSet, cohort: dict[str, Any], settings: Settings) -> tuple[dict[str, Split], Preprocessor]:
    """Fit the cohort's preprocessing on train; index every split into the shared matrix."""
    dev, dt = settings.device, settings.dtype
    source = torch.as_tensor(fs.features, device=dev)  # no copy on the CPU
    train_rows = torch.as_tensor(np.flatnonzero(fs.split == SPLITS["train"]), device=dev)
    pre = Preprocessor(cohort["preprocess"], settings.pca_dim).fit_rows(
        source, train_rows, torch.as_tensor(fs.y, device=dev), torch.as_tensor(fs.a, device=dev), dt)
    dom_col = {"group": fs.group, "a": fs.a, "y": fs.y}[settings.domain]
    splits = {}
    for name, code in SPLITS.items():
        rows = np.flatnonzero(fs.split == code)
        splits[name] = Split(source, torch.as_tensor(rows, device=dev), torch.as_tensor(fs.y[rows], device=dev),
                             torch.as_tensor(fs.group[rows], device=dev),
                             torch.as_tensor(np.maximum(dom_col[rows], 0), device=dev), pre, dt)
    return splits, pre


def _gram(X: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """X̃X̃ᵀ (the bias column included), built in row blocks."""
    out = torch.empty(X.shape[0], X.shape[0], dtype=X.dtype, device=X.device)
    for i in range(0, X.shape[0], chunk):
        out[i: i + chunk] = X[i: i + chunk] @ X.T + 1
    return out


class _Stream:
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
        self.sampler = BalancedSampler(tr.domain.cpu().numpy(), K, settings.batch_size, seed)
        n = len(tr.rows)
        d = tr.pre.out_dim(tr.source.shape[1])
        item = torch.empty((), dtype=settings.dtype).element_size()
        self.X_all = tr.X() if self.sampler.full or n * d * item <= CACHE_BYTES else None
        self.gram_all = None
        if needs_gram and n * n * item <= CACHE_BYTES:
            self.gram_all = _gram(self.X_all if self.X_all is not None else tr.X())
        self.full: tuple[Batch, torch.Tensor | None] | None = None

    def next(self) -> tuple[Batch, torch.Tensor | None]:
        tr = self.tr
        if self.sampler.full:  # the same rows every step
            if self.full is None:
                self.full = (Batch(self.X_all, tr.y, tr.domain, self.K, self.share), self.gram_all)
            return self.full
        idx = torch.as_tensor(self.sampler.next(), device=tr.rows.device)
        X = self.X_all.index_select(0, idx) if self.X_all is not None else tr.X(idx)
        batch = Batch(X, tr.y[idx], tr.domain[idx], self.K, self.share)
        gram = None
        if self.gram_all is not None:
            n = self.gram_all.shape[0]
            gram = self.gram_all.view(-1).take(idx.unsqueeze(1) * n + idx.unsqueeze(0))
        return batch, gram


def _fit_chunk(fs: FeatureSet, method: str, configs: list[dict[str, Any]], cohort: dict[str, Any],
               settings: Settings, splits: dict[str, Split], pre: Preprocessor,
               on_step: Callable[[int], None] | None) -> list[dict[str, Any]]:
    dev, dt = settings.device, settings.dtype
    tr, va = splits["train"], splits["val"]
    cls = OBJECTIVES[method]
    G, C, D = len(configs), fs.num_classes, pre.out_dim(fs.features.shape[1]) + 1
    K = int(tr.domain.max().item()) + 1
    share = torch.bincount(tr.domain, minlength=K).to(dt) / len(tr.domain)

    def col(name: str, default: float) -> torch.Tensor:
        return torch.tensor([float(c.get(name, default)) for c in configs], dtype=dt, device=dev)

    hp = {k: col(k, v) for k, v in cls.hparams.items()}
    anneal = torch.tensor([int(c.get("anneal", 0)) if cls.penalized else 0 for c in configs], device=dev)
    objective: Objective = cls(hp, normalize=settings.normalize, hessian_method=settings.hessian_method,
                               ce=settings.ce_weighting)
    theta = torch.zeros(G, C, D, dtype=dt, device=dev)
    opt = BatchedOptimizer(theta, col("lr", 1e-2), col("weight_decay", 0.0), kind=settings.optimizer)
    active = torch.ones(G, dtype=torch.bool, device=dev)
    diverged = torch.zeros_like(active)
    best_score = torch.full((G,), -1.0, dtype=torch.float64, device=dev)
    best_theta, best_step = theta.clone(), torch.zeros(G, dtype=torch.long, device=dev)
    since_best = torch.zeros(G, dtype=torch.long, device=dev)
    steps_run = torch.zeros(G, dtype=torch.long, device=dev)
    val_total = torch.as_tensor(group_sizes(va.group, fs.num_groups), device=dev)
    present = val_total > 0
    val_X = va.X()  # evaluated every eval_every steps: preprocess once
    stream = _Stream(tr, K, share, settings, int(cohort["seed"]), cls.uses_gram)
    switch_steps = sorted({int(a) for a in anneal.tolist() if a > 0})
    hist: dict[str, list] = {"step": [], "loss": [], "val_wga": [], "val_acc": []}
    for step in range(settings.steps):
        if step in switch_steps:
            # Penalties switch on: restart those heads' optimizer state, as the
            # IRM, Fishr and CMA reference implementations do.
            opt.reset(anneal == step)
        batch, gram = stream.next()
        th = theta.detach().requires_grad_(True)
        loss, logs = objective.loss(th, batch, step >= anneal, gram=gram)
        finite = torch.isfinite(loss)
        (grad,) = torch.autograd.grad(torch.where(finite, loss, torch.zeros_like(loss)).sum(), th)
        if not bool(finite.all()):
            grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
            diverged |= active & ~finite
            active &= finite
        opt.step(grad, active)
        steps_run += active.long()
        last = step == settings.steps - 1
        if (step + 1) % settings.eval_every == 0 or last:
            # A finite loss can still come with an overflowing step; catch it here,
            # once per evaluation rather than once per step.
            bad = active & ~torch.isfinite(theta).flatten(1).all(1)
            diverged |= bad
            active &= ~bad
            with torch.no_grad():
                pred = va.predict(torch.nan_to_num(theta), val_X)
                correct = correct_by_group(pred, va.y, va.group, fs.num_groups)
                wga = (correct[:, present] / val_total[present]).min(-1).values
                acc = correct.sum(-1) / val_total.sum()
                score = wga if settings.select == "val_wga" else acc
                # Checkpoints taken before a head's penalty switches on are plain ERM.
                eligible = active & (step >= anneal)
                better = eligible & (score > best_score)
                best_score = torch.where(better, score, best_score)
                best_theta[better] = theta[better]
                best_step[better] = step + 1
                since_best = torch.where(better, 0, since_best + eligible.long())
                if settings.patience > 0:
                    active &= ~(since_best >= settings.patience)
            hist["step"].append(step + 1)
            hist["loss"].append(loss.detach().cpu().tolist())
            for name, value in logs.items():
                hist.setdefault(name, []).append(value.detach().cpu().tolist())
            hist["val_wga"].append(wga.cpu().tolist())
            hist["val_acc"].append(acc.cpu().tolist())
        if on_step is not None:
            on_step(1)
        if not bool(active.any()):
            if on_step is not None:
                on_step(settings.steps - step - 1)
            break
    never = best_score < 0  # diverged (or annealing) before its first eligible checkpoint
    best_theta[never] = torch.nan_to_num(theta[never])
    return _result_rows(fs, method, configs, settings, objective, splits, pre, best_theta, best_step,
                        steps_run, diverged, hist)


def _result_rows(fs, method, configs, settings, objective, splits, pre, best_theta, best_step, steps_run,
                 diverged, hist) -> list[dict[str, Any]]:
    sizes = {name: group_sizes(sp.group, fs.num_groups) for name, sp in splits.items()}
    per_split = {}
    with torch.no_grad():
        for name, sp in splits.items():
            pred = sp.predict(best_theta)
            per_split[name] = correct_by_group(pred, sp.y, sp.group, fs.num_groups).cpu().numpy()
    penalty_keys = [k for k in hist if k not in ("step", "loss", "ce", "val_wga", "val_acc")]
    pre_state = {k: v.detach().cpu() for k, v in pre.state.items()}
    rows = []
    for g, cfg in enumerate(configs):
        metrics = {name: metrics_from_counts(per_split[name][g], sizes[name], sizes["train"], fs.group_names)
                   for name in splits}
        per_head = {k: ([v[g] for v in vals] if vals and isinstance(vals[0], list) else list(vals))
                    for k, vals in hist.items()}
        history = {k: per_head[k] for k in ("step", "loss", "ce", "val_wga", "val_acc") if k in per_head}
        history["penalty"] = {k: per_head[k] for k in penalty_keys}
        rows.append({
            "method": method,
            "hparams": {**cfg, "steps": settings.steps, "batch_size": settings.batch_size,
                        "optimizer": settings.optimizer, "domain": settings.domain,
                        "ce_weighting": objective.ce or method},
            "status": "diverged" if bool(diverged[g]) else "ok",
            "steps_run": int(steps_run[g]),
            "best_step": int(best_step[g]),
            "metrics": metrics,
            "history": history,
            "_theta": best_theta[g].detach().cpu(),
            "_pre": pre_state,
        })
    return rows
