"""Fit a whole grid of linear heads as one batched computation.

Configurations that share a batch stream and features (same seed and
preprocessing) form a cohort: their heads are stacked as ``(G, C, d+1)`` and
trained together, so the batch, its kernel and every matmul are shared.
Cohorts run one after another. A head's result does not depend on which other
heads share its cohort: batches depend only on (seed, batch size, data), and
heads never interact.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from features.store import SPLITS, FeatureSet
from probe import moments
from probe.errors import UserError
from probe.metrics import correct_by_group, group_sizes, metrics_from_counts
from probe.objectives import OBJECTIVES, Batch
from probe.optim import BatchedOptimizer
from probe.preprocess import Preprocessor

DOMAIN_COLUMNS = ("group", "a", "y")
#: settings shared by every head of a cohort (the rest vary per head)
COHORT_KEYS = ("seed", "preprocess")


@dataclass
class Settings:
    steps: int = 1000
    batch_size: int = 512
    optimizer: str = "adam"
    eval_every: int = 50
    patience: int = 0
    domain: str = "group"
    select: str = "val_wga"
    normalize: str | None = None
    hessian_method: str = "auto"
    pca_dim: int = 64
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    max_heads: int = 512


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
        return self.pre.transform(self.source[rows].to(self.dtype))

    def predict(self, theta: torch.Tensor, chunk: int = 16384) -> torch.Tensor:
        """(G, n) predicted classes, computed in row chunks."""
        parts = [moments.logits(theta, self.X(torch.arange(i, min(i + chunk, len(self.rows)),
                                                           device=self.rows.device))).argmax(-1)
                 for i in range(0, len(self.rows), chunk)]
        return torch.cat(parts, dim=-1)


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
    """Domain-balanced minibatches: each batch holds ~B/K rows of every domain,
    each domain cycled through in a fresh random order (seeded)."""

    def __init__(self, domains: np.ndarray, num_domains: int, batch_size: int, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.pools = [np.flatnonzero(domains == k) for k in range(num_domains)]
        self.pools = [p for p in self.pools if len(p)]
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
            take = []
            while size > 0:
                order = self.orders[i]
                chunk = order[self.pos[i]: self.pos[i] + size]
                take.append(chunk)
                size -= len(chunk)
                self.pos[i] += len(chunk)
                if self.pos[i] >= len(order):
                    self.orders[i] = self.rng.permutation(self.pools[i])
                    self.pos[i] = 0
            parts.extend(take)
        return np.concatenate(parts)


def _to(x: np.ndarray, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    t = torch.as_tensor(x, device=device)
    return t.to(dtype) if dtype is not None else t


def fit_method(fs: FeatureSet, method: str, configs: list[dict[str, Any]], settings: Settings,
               on_step: Callable[[int], None] | None = None,
               results: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Fit every configuration of one method; returns one result row per configuration.

    Rows are appended to ``results`` as each cohort finishes, so a caller that
    catches KeyboardInterrupt still holds every finished configuration.
    """
    if method not in OBJECTIVES:
        raise UserError(f"unknown method {method!r}; choose from {', '.join(sorted(OBJECTIVES))}")
    out = results if results is not None else []
    cohorts: dict[tuple, list[int]] = {}
    for i, cfg in enumerate(configs):
        cohorts.setdefault(tuple(cfg[k] for k in COHORT_KEYS), []).append(i)
    rows: dict[int, dict[str, Any]] = {}
    for key, idx in cohorts.items():
        cohort = dict(zip(COHORT_KEYS, key, strict=True))
        for start in range(0, len(idx), settings.max_heads):
            chunk = idx[start: start + settings.max_heads]
            fitted = _fit_cohort(fs, method, [configs[i] for i in chunk], cohort, settings, on_step)
            for i, row in zip(chunk, fitted, strict=True):
                row["run_id"] = f"{method}-{i:04d}"
                rows[i] = row
                out.append(row)
    return [rows[i] for i in sorted(rows)]


def prepare(fs: FeatureSet, cohort: dict[str, Any], settings: Settings) -> tuple[dict[str, Split], Preprocessor]:
    dev, dt = settings.device, settings.dtype
    source = torch.as_tensor(fs.features, device=dev)  # no copy on the CPU
    train_rows = torch.as_tensor(np.flatnonzero(fs.split == SPLITS["train"]), device=dev)
    pre = Preprocessor(cohort["preprocess"], settings.pca_dim).fit_rows(
        source, train_rows, _to(fs.y, dev), _to(fs.a, dev), dt)
    dom_col = {"group": fs.group, "a": fs.a, "y": fs.y}[settings.domain]
    splits = {}
    for name, code in SPLITS.items():
        rows = np.flatnonzero(fs.split == code)
        splits[name] = Split(source, _to(rows, dev), _to(fs.y[rows], dev), _to(fs.group[rows], dev),
                             _to(np.maximum(dom_col[rows], 0), dev), pre, dt)
    return splits, pre


def _fit_cohort(fs: FeatureSet, method: str, configs: list[dict[str, Any]], cohort: dict[str, Any],
                settings: Settings, on_step: Callable[[int], None] | None) -> list[dict[str, Any]]:
    dev, dt = settings.device, settings.dtype
    splits, pre = prepare(fs, cohort, settings)
    tr, va = splits["train"], splits["val"]
    cls = OBJECTIVES[method]
    G, C, D = len(configs), fs.num_classes, pre.out_dim(fs.features.shape[1]) + 1
    K = int(tr.domain.max().item()) + 1
    share = torch.bincount(tr.domain, minlength=K).to(dt) / len(tr.domain)

    def col(name: str, default: float = 0.0) -> torch.Tensor:
        return torch.tensor([float(c.get(name, default)) for c in configs], dtype=dt, device=dev)

    hp = {k: col(k, v) for k, v in cls.hparams.items()}
    anneal = torch.tensor([int(c.get("anneal", 0)) if cls.penalized else 0 for c in configs], device=dev)
    objective = cls(hp, normalize=settings.normalize, hessian_method=settings.hessian_method)
    theta = torch.zeros(G, C, D, dtype=dt, device=dev)
    opt = BatchedOptimizer(theta, col("lr", 1e-2), col("weight_decay"), kind=settings.optimizer)
    active = torch.ones(G, dtype=torch.bool, device=dev)
    diverged = torch.zeros_like(active)
    best_score = torch.full((G,), -1.0, dtype=torch.float64, device=dev)
    best_theta, best_step = theta.clone(), torch.zeros(G, dtype=torch.long, device=dev)
    since_best = torch.zeros(G, dtype=torch.long, device=dev)
    val_total = torch.as_tensor(group_sizes(va.group, fs.num_groups), device=dev)
    val_X = va.X()  # evaluated every eval_every steps: preprocess once
    sampler = BalancedSampler(tr.domain.cpu().numpy(), K, settings.batch_size, int(cohort["seed"]))
    hist: dict[str, list] = {"step": [], "loss": [], "val_wga": [], "val_acc": []}
    steps_run = torch.zeros(G, dtype=torch.long, device=dev)
    for step in range(settings.steps):
        switching = (anneal == step) & (anneal > 0)
        if bool(switching.any()):
            opt.reset(switching)  # as IRM, Fishr and the CMA authors do
        idx = torch.as_tensor(sampler.next(), device=dev)
        batch = Batch(tr.X(idx), tr.y[idx], tr.domain[idx], K, share)
        th = theta.detach().requires_grad_(True)
        loss, logs = objective.loss(th, batch, step >= anneal)
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
                pred = moments.logits(torch.nan_to_num(theta), val_X).argmax(-1)
                correct = correct_by_group(pred, va.y, va.group, fs.num_groups)
                present = val_total > 0
                wga = (correct[:, present] / val_total[present]).min(-1).values
                acc = correct.sum(-1) / val_total.sum()
                score = wga if settings.select == "val_wga" else acc
                # Checkpoints taken before a head's penalty switches on are plain ERM.
                eligible = active & (step >= anneal)
                better = eligible & (score > best_score)
                best_score = torch.where(better, score, best_score)
                best_theta[better] = theta[better]
                best_step[better] = step + 1
                since_best = torch.where(better, 0, since_best + 1)
                if settings.patience > 0:
                    active &= ~((since_best > settings.patience) & (step >= anneal))
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
    never = best_score < 0  # diverged before its first eligible checkpoint
    best_theta[never] = torch.nan_to_num(theta[never])
    return _result_rows(fs, method, configs, settings, splits, pre, best_theta, best_step, steps_run,
                        diverged, hist)


def _result_rows(fs, method, configs, settings, splits, pre, best_theta, best_step, steps_run, diverged,
                 hist) -> list[dict[str, Any]]:
    train_total = group_sizes(splits["train"].group, fs.num_groups)
    per_split = {}
    with torch.no_grad():
        for name, sp in splits.items():
            pred = sp.predict(best_theta)
            per_split[name] = correct_by_group(pred, sp.y, sp.group, fs.num_groups).cpu().numpy()
    rows = []
    for g, cfg in enumerate(configs):
        metrics = {
            name: metrics_from_counts(per_split[name][g], group_sizes(sp.group, fs.num_groups), train_total,
                                      fs.group_names)
            for name, sp in splits.items()
        }
        history = {k: ([v[g] for v in vals] if vals and isinstance(vals[0], list) else vals)
                   for k, vals in hist.items()}
        penalties = {k: history.pop(k) for k in list(history) if k not in ("step", "loss", "ce", "val_wga",
                                                                            "val_acc")}
        history["penalty"] = penalties
        rows.append({
            "method": method,
            "hparams": {**cfg, "steps": settings.steps, "batch_size": settings.batch_size,
                        "optimizer": settings.optimizer, "domain": settings.domain},
            "status": "diverged" if bool(diverged[g]) else "ok",
            "steps_run": int(steps_run[g]),
            "best_step": int(best_step[g]),
            "metrics": metrics,
            "history": history,
            "_theta": best_theta[g].detach().cpu(),
            "_pre": {k: v.detach().cpu() for k, v in pre.state.items()},
        })
    return rows
