"""One chunk of convex heads fitted by the full-batch solver: from a cohort's prepared splits
to result rows, the same rows the stochastic trainer writes.

The solver minimises exactly the trainer's full-batch objective: the method's own
cross-entropy weighting (read off its ``base_loss``, see :func:`row_weights`), the
same preprocessing (the cohort's ``Split``s) and λ/2‖W‖² on the weights only. What
the stochastic trainer needs and the solver does not (learning rate, seed, batches,
checkpoints) is ignored: a head's optimum depends only on its weight decay, so
configurations that differ in nothing else are solved once and share the result.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from probe.fitting.loop import head_rows
from probe.fitting.plan import Chunk, problem_key
from probe.methods.base import GradientMethod
from probe.records.fitset import FitSet
from probe.records.results import Result
from probe.train.data import Batch, Split
from probe.train.scoring import kept_bounds
from probe.train.settings import Settings
from probe.train.solver import Problem, Solution, lbfgs


def row_weights(objective: GradientMethod, tr: Split, X: torch.Tensor) -> torch.Tensor:
    """The objective's cross-entropy weighting as (N,) weights on the training rows.

    A convex method's ``base_loss`` is linear in the per-domain mean CEs, so given the
    identity (one "head" per present domain, CE 1 in its own domain) it returns each
    domain's weight; a row then weighs its domain's weight over the domain's size.
    Pooled: 1/N for every row; domain: 1/(K' n_e).
    """
    K = int(tr.domain.max().item()) + 1
    share = torch.bincount(tr.domain, minlength=K).to(X.dtype) / len(tr.domain)
    batch = Batch(X, tr.y, tr.domain, K, share)
    eye = torch.eye(len(batch.ids), dtype=X.dtype, device=X.device)
    per_domain, _ = objective.base_loss(eye, batch)
    return batch.W @ per_domain


class SolverFit:
    """The heads of one chunk, solved together (``probe.fitting.loop.fit_chunks`` runs it)."""

    def __init__(self, fs: FitSet, method: type[GradientMethod], configs: list[dict[str, Any]], chunk: Chunk,
                 settings: Settings, splits: dict[str, Split]) -> None:
        self.fs, self.method, self.configs, self.settings, self.splits = fs, method, configs, settings, splits
        self.objective = method({}, settings)

    @torch.no_grad()
    def run(self, on_step: Callable[[int], None] | None) -> list[Result]:
        st, tr = self.settings, self.splits["train"]
        X = tr.X()
        keys = [problem_key(cfg) for cfg in self.configs]
        unique = list(dict.fromkeys(keys))
        lam = torch.tensor([float(dict(k).get("weight_decay", self.method.hyperparameters()["weight_decay"].default))
                            for k in unique], dtype=torch.float64, device=X.device)
        pb = Problem(X, tr.y, row_weights(self.objective, tr, X), self.fs.num_classes)
        sol = lbfgs(pb, lam, st.tol, st.max_iter, on_iteration=on_step)
        if on_step is not None:  # progress counts max_iter per chunk; the rest is skipped
            on_step(st.max_iter - max(sol.iterations, default=0))
        which = [unique.index(k) for k in keys]
        theta = sol.theta.to(X.dtype)
        fixed = {"solver": "lbfgs", "tol": st.tol, "max_iter": st.max_iter, "domain": st.domain,
                 "ce_weighting": self.objective.ce}
        fates = [_fate(sol, u) for u in which]
        # measured once per distinct optimum: configurations that share one share its figures
        unique_bounds = kept_bounds(self.fs, tr, theta, list(sol.iterations), st, X=X)
        bounds = [dict(unique_bounds[u]) if unique_bounds[u] is not None else None for u in which]
        rows = head_rows(self.fs, self.method.name, self.configs, fixed, self.splits, theta,
                         [{**f, "bounds": b} for f, b in zip(fates, bounds, strict=True)], {"train": X}, which)
        for row in rows:  # validation is scored once, at the final point: the row's metrics
            val = row.metrics.get("val")
            if row.history["step"] and val:
                for key in ("wga", "acc", "worst_class"):
                    row.history[f"val_{key}"][-1] = val.get(key)
        return rows


def _fate(sol: Solution, u: int) -> dict[str, Any]:
    """Status, iterations and history of solved problem ``u``: the final point is the kept head."""
    n = sol.iterations[u]
    # "loss" is the method's loss as the trainer logs it (no weight decay: ERM's is its CE);
    # "objective" adds λ/2‖W‖², what the solver minimises
    history = {"step": list(range(1, n + 1)), "loss": list(sol.ce[u]), "ce": list(sol.ce[u]),
               "val_wga": [None] * n, "val_acc": [None] * n, "val_worst_class": [None] * n, "penalty": {},
               "objective": list(sol.loss[u]), "grad_max": list(sol.grad_trace[u])}
    return {"status": sol.status[u], "steps_run": n, "best_step": n, "history": history}
