"""Cohorts and chunks: which heads are fitted together, sized to the device's memory.

Configurations that share a batch stream and features (same seed and
preprocessing) form a cohort; a cohort whose heads would not fit in
``MEMORY_FRACTION`` of the free memory is split into chunks of heads, each run
over the same batch stream (identical results: heads never interact).

Heads fitted by the full-batch solver have no batch stream: their cohorts are the
preprocessings alone, and configurations with the same optimum (they differ only
in seed or learning rate) stay in one chunk, where they are solved once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from base.device import available_memory
from base.errors import UserError
from features.store import SPLITS
from probe.methods.base import GradientMethod, convex_methods
from probe.preprocessing import Preprocessor
from probe.records.fitset import FitSet
from probe.train.data import CACHE_BYTES
from probe.train.settings import Settings
from probe.train.solver import MEMORY, PRECONDITIONER_ROWS_PER_COLUMN

#: settings shared by every head of a cohort (the rest vary per head)
COHORT_KEYS = ("seed", "preprocess")
#: fraction of the free device memory a chunk of heads may plan to use
MEMORY_FRACTION = 0.5
#: hyperparameters of a convex method that its optimum does not depend on
SOLVER_IGNORES = ("lr", "seed")


@dataclass(frozen=True)
class Chunk:
    """Heads fitted together: their cohort's shared settings and their config indices."""

    seed: int
    preprocess: str
    configs: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.configs)


def uses_solver(method: type[GradientMethod], settings: Settings) -> bool:
    """Whether ``method``'s heads are fitted by the full-batch solver (``probe.train.solver``)
    rather than the stochastic trainer: the ``solver`` setting and the method's ``convex``
    declaration decide. The solver fits heads with a bias column; heads without one
    (``bias`` false, the CMA authors' protocol) are trained by the stochastic trainer."""
    if settings.solver == "lbfgs" and not method.convex:
        raise UserError(f"`solver` lbfgs fits the convex penalty-free methods ({convex_methods()}); {method.name} is "
                        "trained by the stochastic trainer: use auto or adam")
    if settings.solver == "lbfgs" and not settings.bias:
        raise UserError("`solver` lbfgs fits heads with a bias column; with `bias` off use auto or adam")
    return settings.solver != "adam" and method.convex and settings.bias


def out_width(fs: FitSet, preprocess: str, n_train: int, settings: Settings) -> int:
    """Feature columns after ``preprocess`` with the fit's knobs, refusing knobs it could not
    honour (a `pca_dim` beyond the rows or columns) rather than recording one number and
    using another."""
    pre = Preprocessor(preprocess, **settings.options)
    pre.check(fs.features.shape[1], n_train, fs.path)
    return pre.out_dim(fs.features.shape[1], n_train)


def memory_estimate(method: type[GradientMethod], B: int, C: int, d: int, K: int, n_train: int, n_eval: int,
                    itemsize: int) -> tuple[int, int]:
    """(bytes shared by the chunk, bytes per head) of one training step plus an
    evaluation, a deliberate over-estimate (autograd keeps several copies)."""
    D = d + 1
    shared = 6 * B * B + 3 * B * D + n_eval * D  # Gram/kernel and the batch; val features
    if n_train * d * itemsize <= CACHE_BYTES:  # the caches of data.Stream
        shared += n_train * d
    if method.uses_gram and n_train * n_train * itemsize <= CACHE_BYTES:
        shared += n_train * n_train
    per = 10 * C * D + 16 * B * C  # params, grads, Adam moments, best; logits and their grads
    per += 2 * min(n_eval, 16384) * C  # evaluation logits
    per += method.memory_per_head(B, C, D, K)
    return shared * itemsize, per * itemsize


def problem_key(config: dict[str, Any]) -> tuple:
    """What tells two configurations' optima apart under the full-batch solver (within one
    preprocessing cohort): everything but the seed and the learning rate."""
    return tuple(sorted((k, v) for k, v in config.items() if k not in SOLVER_IGNORES and k != "preprocess"))


def solver_memory_estimate(C: int, d: int, n_train: int, itemsize: int) -> tuple[int, int]:
    """(bytes shared by the chunk, bytes per distinct head) of the full-batch solver: the
    preprocessed training rows and the preconditioner's rows; per head, a few (N, C)
    logits-sized buffers in the data's dtype and its float64 state (the L-BFGS pairs s and
    H₀y, one of them again while the memory shifts, the preconditioner's inverse)."""
    D = d + 1
    shared = (n_train * d + PRECONDITIONER_ROWS_PER_COLUMN * D * D) * itemsize
    per = 10 * n_train * C * itemsize + (3 * MEMORY + 8) * C * D * 8 + D * D * 8
    return shared, per


def _chunked(groups: list[list[int]], size: int) -> list[list[int]]:
    """Groups of config indices in equal chunks of at most ``size`` groups (at least one),
    the same total work with less idle memory in the last one."""
    n_chunks = math.ceil(len(groups) / size)
    step = math.ceil(len(groups) / n_chunks)
    return [[i for g in groups[s: s + step] for i in g] for s in range(0, len(groups), step)]


def plan(fs: FitSet, method: type[GradientMethod], configs: list[dict[str, Any]],
         settings: Settings) -> list[Chunk]:
    """The chunks in the order they are fitted: one per cohort, or several when a
    cohort's heads do not fit in memory at once."""
    solver = uses_solver(method, settings)
    # the solver's optimum ignores the seed, unless the preprocessing draws from it
    seeded = {p: Preprocessor(str(p), **settings.options).seeded() for p in {c["preprocess"] for c in configs}}
    cohorts: dict[tuple, list[int]] = {}
    for i, cfg in enumerate(configs):
        seedless = solver and not seeded[cfg["preprocess"]]
        key = (cfg["preprocess"],) if seedless else tuple(cfg[k] for k in COHORT_KEYS)
        cohorts.setdefault(key, []).append(i)
    n_train = int((fs.split == SPLITS["train"]).sum())
    B = n_train if settings.batch_size <= 0 else min(settings.batch_size, n_train)
    n_eval = int((fs.split == SPLITS["val"]).sum())
    K = fs.num_domains
    item = torch.empty((), dtype=settings.dtype).element_size()
    budget = settings.memory_bytes
    if budget is None:
        budget = int(MEMORY_FRACTION * available_memory(settings.device))
    out = []
    for idx in cohorts.values():
        preprocess = configs[idx[0]]["preprocess"]
        d = out_width(fs, str(preprocess), n_train, settings)
        if solver:
            shared, per = solver_memory_estimate(fs.num_classes, d, n_train, item)
            same: dict[tuple, list[int]] = {}
            for i in idx:
                same.setdefault(problem_key(configs[i]), []).append(i)
            groups = list(same.values())
        else:
            shared, per = memory_estimate(method, B, fs.num_classes, d, K, n_train, n_eval, item)
            groups = [[i] for i in idx]
        size = max(1, (budget - shared) // per)
        if settings.max_heads is not None:
            size = min(size, settings.max_heads)
        seed = int(configs[idx[0]]["seed"])  # the cohort's seed (any of them, for the solver)
        out += [Chunk(seed, str(preprocess), tuple(c)) for c in _chunked(groups, size)]
    return out
