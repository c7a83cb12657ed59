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
from probe.records.results import Result, empty_history, final_status, run_id

if TYPE_CHECKING:  # the trainer's modules import torch: only when a fit runs (the CLI lists methods at start)
    from probe.train.data import Split
    from probe.train.settings import Settings
    from probe.train.solver import Solution

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
            theta, tuned, status = cls.fit_cohort(fs, splits, members, int(seed), settings)
            rows = result_rows(fs, cls.name, members, splits, theta, settings, tuned, status,
                               cls.selection_rows(splits, int(seed)))
            for i, row in zip(idx, rows, strict=True):
                row.run_id = run_id(cls.name, i)
            cls.rescore(fs, splits, members, rows, int(seed))
            results.extend(rows)

    @classmethod
    def fit_cohort(cls, fs: FitSet, splits: dict[str, Split], configs: list[dict[str, Any]], seed: int,
                   settings: Settings) -> tuple[torch.Tensor, list[dict[str, Any]], list[str]]:
        """(G, C, D) heads for ``configs`` (one per configuration, in order; D = d + 1 with the
        fit's ``bias``, d without), on the splits' device, what each chose or found inside its
        fit (its ``tuned`` record) and its fit's status (``probe.records.results.STATUSES``:
        the solver's verdict)."""
        raise NotImplementedError

    @classmethod
    def selection_rows(cls, splits: dict[str, Split], seed: int) -> np.ndarray | None:
        """The positions of the validation rows the heads are judged on (their collapse) and
        selected by, when not all of them (by default all: None)."""
        return None

    @classmethod
    def rescore(cls, fs: FitSet, splits: dict[str, Split], configs: list[dict[str, Any]], rows: list[Result],
                seed: int) -> None:
        """Change the rows' figures where the method's own protocol requires (by default none)."""


def solve(X: torch.Tensor, y: torch.Tensor, w: torch.Tensor, weight_decay: Iterable[float],
          num_classes: int, settings: Settings) -> Solution:
    """The optimum of Σ_i w_i CE_i + λ_g/2 ‖W‖² for each λ_g: ``.theta`` (G, C, D) float64
    (a bias column as the fit's ``bias`` says), ``.status`` each head's verdict (the
    full-batch solver, ``probe.train.solver``, stopping by the fit's ``tol`` and
    ``max_iter``); ``w`` is normalised to sum to 1. On X's device, wherever ``y`` and ``w`` are."""
    from probe.train.solver import Problem, lbfgs

    lam = torch.as_tensor(list(weight_decay), dtype=torch.float64, device=X.device)
    w = w.to(device=X.device, dtype=X.dtype)
    pb = Problem(X, y.to(X.device), w / w.sum(), num_classes, bias=settings.bias)
    return lbfgs(pb, lam, settings.tol, settings.max_iter)


def class_balanced(y: np.ndarray, num_classes: int) -> np.ndarray:
    """Row weights giving every class present the same total weight (summing to 1)."""
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    present = int((counts > 0).sum())
    return 1.0 / (present * counts[y])


def result_rows(fs: FitSet, method: str, configs: list[dict[str, Any]], splits: dict[str, Split],
                theta: torch.Tensor, settings: Settings, tuned: list[dict[str, Any]], status: list[str],
                judge: np.ndarray | None = None) -> list[Result]:
    """The result rows of heads fitted in one piece: scored on every split, their bound
    terms measured, each with its fit's ``status``, or ``collapsed`` when the validation
    rows ``judge`` (positions; default all) show it (``final_status``, as every fitter)."""
    from probe.train.scoring import kept_bounds, score_heads

    theta = theta.to(settings.dtype)
    metrics, collapsed = score_heads(fs, splits, theta, val_rows=judge)
    bounds = kept_bounds(fs, splits["train"], theta, [0] * len(configs), settings)
    pre = {k: v.detach().cpu() for k, v in splits["train"].pre.state.items()}
    return [Result(method=method, hparams=dict(cfg), metrics=metrics[g],
                   status=final_status(status[g], bool(collapsed[g])),
                   history=empty_history(), tuned=tuned[g] or None, bounds=bounds[g],
                   theta=theta[g].detach().cpu(), pre=pre)
            for g, cfg in enumerate(configs)]


def permutation_split(rows: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` shuffled with ``seed`` and cut at ``share``: (first part, the rest), each sorted."""
    order = np.random.default_rng(seed).permutation(rows)
    cut = int(round(share * len(order)))
    return np.sort(order[:cut]), np.sort(order[cut:])
