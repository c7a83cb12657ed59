"""What the label-free last-layer methods (AFR, JTT, CB-LLR) share: a method that fits its own
heads, on the fit's preprocessed splits, through the full-batch solver or gradient descent,
batched over the configurations that share their rows' weights, and scored, measured
and recorded like every other method's heads.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from base.lazy import lazy_import
from probe.methods.base import Method
from probe.records.fitset import FitSet
from probe.records.results import Result, empty_history, run_id

if TYPE_CHECKING:  # the trainer's modules import torch: only when a fit runs (the CLI lists methods at start)
    from probe.train.data import Split
    from probe.train.settings import Settings

torch = lazy_import("torch")

class Retrained(Method):
    """A method that fits its own heads (``fit_cohort``) on the fit's preprocessed splits;
    configurations are fitted cohort by cohort (same seed and preprocessing)."""

    trained_by = "own fit"
    common: ClassVar[tuple[str, ...]] = ("weight_decay", "seed", "preprocess")

    @classmethod
    def fit(cls, fs, configs, settings, results):
        from probe.train.data import SplitCache

        cache = SplitCache()
        cohorts: dict[tuple, list[int]] = {}
        for i, cfg in enumerate(configs):
            cohorts.setdefault((cfg["seed"], cfg["preprocess"]), []).append(i)
        for (seed, preprocess), idx in cohorts.items():
            splits = cache.get(fs, preprocess, settings, int(seed))
            members = [configs[i] for i in idx]
            theta, tuned = cls.fit_cohort(fs, splits, members, int(seed), settings)
            rows = result_rows(fs, cls.name, members, splits, theta, settings, tuned)
            for i, row in zip(idx, rows, strict=True):
                row.run_id = run_id(cls.name, i)
            cls.rescore(fs, splits, members, rows, int(seed))
            results.extend(rows)

    @classmethod
    def fit_cohort(cls, fs: FitSet, splits: dict[str, Split], configs: list[dict[str, Any]], seed: int,
                   settings: Settings) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        """(G, C, d+1) heads for ``configs`` (one per configuration, in order) and what each
        chose or found inside its fit (its ``tuned`` record)."""
        raise NotImplementedError

    @classmethod
    def rescore(cls, fs: FitSet, splits: dict[str, Split], configs: list[dict[str, Any]], rows: list[Result],
                seed: int) -> None:
        """Change the rows' figures where the method's own protocol requires (by default none)."""


def solve(X: torch.Tensor, y: torch.Tensor, w: torch.Tensor, weight_decay: Iterable[float],
          num_classes: int, settings: Settings) -> torch.Tensor:
    """(G, C, d+1) float64: the optimum of Σ_i w_i CE_i + λ_g/2 ‖W‖² for each λ_g (the
    full-batch solver, ``probe.train.solver``, stopping by the fit's ``tol`` and
    ``max_iter``); ``w`` is normalised to sum to 1."""
    from probe.train.solver import Problem, lbfgs

    lam = torch.as_tensor(list(weight_decay), dtype=torch.float64, device=X.device)
    pb = Problem(X, y, (w / w.sum()).to(X.dtype), num_classes)
    return lbfgs(pb, lam, settings.tol, settings.max_iter).theta


def class_balanced(y: np.ndarray, num_classes: int) -> np.ndarray:
    """Row weights giving every class present the same total weight (summing to 1)."""
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    present = int((counts > 0).sum())
    return 1.0 / (present * counts[y])


def result_rows(fs: FitSet, method: str, configs: list[dict[str, Any]], splits: dict[str, Split],
                theta: torch.Tensor, settings: Settings, tuned: list[dict[str, Any]]) -> list[Result]:
    """The result rows of heads fitted in one piece: scored on every split, their bound
    terms measured, status ``collapsed`` when validation shows it."""
    from probe.train.scoring import kept_bounds, score_heads

    theta = theta.to(settings.dtype)
    metrics, collapsed = score_heads(fs, splits, theta)
    bounds = kept_bounds(fs, splits["train"], theta, [0] * len(configs), settings)
    pre = {k: v.detach().cpu() for k, v in splits["train"].pre.state.items()}
    return [Result(method=method, hparams=dict(cfg), metrics=metrics[g],
                   status="collapsed" if bool(collapsed[g]) else "ok",
                   history=empty_history(), tuned=tuned[g] or None, bounds=bounds[g],
                   theta=theta[g].detach().cpu(), pre=pre)
            for g, cfg in enumerate(configs)]


def permutation_split(rows: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` shuffled with ``seed`` and cut at ``share``: (first part, the rest), each sorted."""
    order = np.random.default_rng(seed).permutation(rows)
    cut = int(round(share * len(order)))
    return np.sort(order[:cut]), np.sort(order[cut:])
