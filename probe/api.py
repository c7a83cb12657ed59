"""Python API mirroring `probe fit`, scikit-learn style.

* :func:`fit_grid` fits each method's hyperparameter grid in one batched run,
  selects by validation and (optionally) writes the run folder; the CLI is a thin
  layer over it.
* :class:`LinearHead` is one head as a scikit-learn estimator.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin

from base.device import resolve_device
from base.errors import UserError
from features.store import SPLITS, FeatureSet, read_features
from probe import moments
from probe.dfr import fit_dfr
from probe.grid import COMMON_DEFAULTS, DEFAULT_GRIDS, check_value, expand
from probe.objectives import OBJECTIVES
from probe.preprocess import CHOICES as PREPROCESS_CHOICES
from probe.preprocess import Preprocessor
from probe.runs import prepare_run_dir, provenance, write_run
from probe.trainer import Settings, fit_method, plan, validate_for_fit

#: every method `probe fit --method` accepts: the gradient-trained objectives and DFR
METHODS = [*sorted(OBJECTIVES), "dfr"]
INT_HPARAMS = ("anneal", "seed")


def grid_keys() -> set[str]:
    """Every hyperparameter a grid may set."""
    return set(COMMON_DEFAULTS) | {k for cls in OBJECTIVES.values() for k in cls.hparams}


def check_grid(grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """Validate a grid given through the API (the CLI's flags are parsed already)."""
    out = {}
    for key, values in grid.items():
        flag = "--" + key.replace("_", "-")
        if key not in grid_keys():
            raise UserError(f"unknown hyperparameter {key!r}; choose from {', '.join(sorted(grid_keys()))}")
        values = list(values) if isinstance(values, (list, tuple)) else [values]
        if not values:
            raise UserError(f"{flag}: no values given")
        if key == "preprocess":
            for v in values:
                if v not in PREPROCESS_CHOICES:
                    raise UserError(f"--preprocess {v!r} is not one of: {', '.join(PREPROCESS_CHOICES)}")
        else:
            for v in values:
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise UserError(f"{flag}: {v!r} is not a number")
            values = [check_value(flag, float(v), int if key in INT_HPARAMS else float) for v in values]
        out[key] = values
    return out


def method_grid(method: str, grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """The configurations one method fits: its own hyperparameters plus the common
    ones; a key missing from ``grid`` takes the method's default grid. Keys the
    method does not use are ignored."""
    cls = OBJECTIVES[method]
    keys = list(cls.hparams) + list(COMMON_DEFAULTS)
    if not cls.penalized:
        keys.remove("anneal")
    values = {k: grid.get(k) or DEFAULT_GRIDS.get(method, {}).get(k) or COMMON_DEFAULTS.get(k) or [cls.hparams[k]]
              for k in keys}
    return expand(values)


def _methods(methods: list[str] | str) -> list[str]:
    names = [m.strip() for m in methods.split(",")] if isinstance(methods, str) else list(methods)
    names = [m for m in names if m]
    if not names:
        raise UserError("--method: no method given; choose from " + ", ".join(METHODS))
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        raise UserError(f"--method: unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    return list(dict.fromkeys(names))


def fit_grid(features: FeatureSet | str | Path, methods: list[str] | str, grid: dict[str, list[Any]] | None = None,
             out: str | Path | None = None, *, overwrite: bool = False, allow_incomplete: bool = False,
             device: str = "auto", dtype: str = "float32", progress: Any = None, command: str | None = None,
             **settings: Any) -> dict[str, Any]:
    """Fit every method's grid; write the run folder when ``out`` is given.

    ``grid`` maps hyperparameter names (``alpha``, ``beta``, ``lam``, ``eta``,
    ``anneal``, ``seed``, ``lr``, ``weight_decay``, ``preprocess``) to value lists;
    missing ones take each method's defaults (``probe.grid``). ``settings`` are the
    fields of :class:`probe.trainer.Settings` (steps, batch_size, optimizer,
    eval_every, patience, domain, select, normalize, hessian_method, pca_dim, ce_weighting,
    max_heads, memory_bytes). ``progress`` (optional) has ``total(n)`` and
    ``advance(n)``, counted in steps × cohorts.

    Returns ``{"summary": ..., "rows": {method: [result rows]}}``. On Ctrl-C
    (KeyboardInterrupt) the configurations of every cohort that finished are
    written (unfinished ones are left out) and the exception propagates.
    """
    names = _methods(methods)
    if dtype not in ("float32", "float64"):
        raise UserError(f"--dtype {dtype!r} is not one of: float32, float64")
    grid = check_grid(grid or {})
    st = Settings(device=resolve_device(device), dtype=getattr(torch, dtype), **settings)
    fs = features if isinstance(features, FeatureSet) else read_features(features, allow_incomplete)
    validate_for_fit(fs, st.domain)
    out_path = Path(out) if out is not None else None
    if out_path is not None:
        prepare_run_dir(out_path, overwrite)
    configs = {m: method_grid(m, grid) for m in names if m != "dfr"}
    # Planned once: the progress total and the fit then agree on the chunks.
    chunks = {m: plan(fs, m, cs, st) for m, cs in configs.items()}
    if progress is not None:
        progress.total(sum(len(c) for c in chunks.values()) * st.steps)
    rows: dict[str, list[dict[str, Any]]] = {m: [] for m in names}
    prov = provenance(fs.provenance(), str(st.device), st.select, command=command, settings=st.public(),
                      grid=grid)
    try:
        for m in names:
            if m == "dfr":  # sklearn-based: one head per seed, C tuned inside
                for i, s in enumerate(grid.get("seed") or COMMON_DEFAULTS["seed"]):
                    rows[m].append({**fit_dfr(fs, seed=int(s)), "run_id": f"dfr-{i:04d}"})
                continue
            fit_method(fs, m, configs[m], st, on_step=progress.advance if progress else None, results=rows[m],
                       chunks=chunks[m])
    except KeyboardInterrupt as exc:
        if out_path is not None and any(rows.values()):
            write_run(out_path, {m: r for m, r in rows.items() if r}, fs, prov, st.select)
            exc.probe_written = str(out_path)  # type: ignore[attr-defined]  # for the CLI's message
        raise
    summary = write_run(out_path, rows, fs, prov, st.select) if out_path is not None else None
    return {"summary": summary, "rows": rows}


class LinearHead(ClassifierMixin, BaseEstimator):
    """One linear softmax head fitted by one objective, scikit-learn style.

    Every hyperparameter is an explicit argument (``get_params``/``set_params``,
    ``sklearn.base.clone`` work); the method-specific ones (``alpha``, ``beta`` for
    cma; ``lam`` for irm, vrex, fishr; ``eta`` for groupdro) default to the
    method's own default when None. Fitted attributes end in ``_``: ``classes_``,
    ``coef_`` ((C, d+1) on the preprocessed features, bias last),
    ``preprocessor_`` and ``result_`` (the run's result row: metrics, history).

    >>> head = LinearHead(method="cma", alpha=1e3, beta=1e2).fit(X, y, domains)
    >>> head.predict(X_test)
    """

    def __init__(self, method: str = "erm", *, alpha: float | None = None, beta: float | None = None,
                 lam: float | None = None, eta: float | None = None, lr: float = 1e-2, weight_decay: float = 1e-4,
                 steps: int = 1000, batch_size: int = 512, anneal: int = 0, seed: int = 0,
                 preprocess: str = "standardize", optimizer: str = "adam", ce_weighting: str | None = None,
                 eval_every: int = 50, patience: int = 0, select: str = "val_wga", normalize: str | None = None,
                 hessian_method: str = "auto", pca_dim: int = 64, device: str = "auto",
                 dtype: str = "float32") -> None:
        self.method = method
        self.alpha, self.beta, self.lam, self.eta = alpha, beta, lam, eta
        self.lr, self.weight_decay, self.steps, self.batch_size = lr, weight_decay, steps, batch_size
        self.anneal, self.seed, self.preprocess, self.optimizer = anneal, seed, preprocess, optimizer
        self.ce_weighting = ce_weighting
        self.eval_every, self.patience, self.select = eval_every, patience, select
        self.normalize, self.hessian_method, self.pca_dim = normalize, hessian_method, pca_dim
        self.device, self.dtype = device, dtype

    def fit(self, X: np.ndarray, y: np.ndarray, domains: np.ndarray, X_val: np.ndarray | None = None,
            y_val: np.ndarray | None = None, groups_val: np.ndarray | None = None) -> LinearHead:
        """Fit on ``X`` (N, d) with labels ``y`` and ``domains`` (the penalties' domains,
        also the groups of the metrics). With a validation set (``X_val``, ``y_val``,
        ``groups_val``) the checkpoint with the best validation score is kept, as in
        `probe fit`; without one, the last step's head."""
        if self.method not in OBJECTIVES:
            raise UserError(f"method {self.method!r} is not one of: {', '.join(sorted(OBJECTIVES))}")
        X = np.asarray(X, np.float32)
        self.classes_, y_idx = np.unique(np.asarray(y), return_inverse=True)
        domains = np.asarray(domains)
        _, dom_idx = np.unique(domains, return_inverse=True)
        if X.ndim != 2 or len(X) != len(y_idx) or len(dom_idx) != len(y_idx):
            raise ValueError(f"X (N, d), y and domains must have the same N; got {X.shape}, {len(y_idx)}, "
                             f"{len(dom_idx)}")
        has_val = X_val is not None
        if has_val:
            if y_val is None or groups_val is None:
                raise ValueError("X_val needs y_val and groups_val")
            Xv = np.asarray(X_val, np.float32)
            yv = np.searchsorted(self.classes_, np.asarray(y_val))
            if np.any(yv >= len(self.classes_)) or np.any(self.classes_[np.minimum(yv, len(self.classes_) - 1)]
                                                          != np.asarray(y_val)):
                raise ValueError("y_val has labels that y does not have")
            gv = np.asarray(groups_val, np.int64)
        else:  # validation = the training rows, evaluated only at the last step
            Xv, yv, gv = X, y_idx, dom_idx
        n, nv = len(y_idx), len(yv)
        n_groups = int(max(dom_idx.max(), gv.max())) + 1
        fs = FeatureSet(
            features=np.concatenate([X, Xv]), y=np.concatenate([y_idx, yv]).astype(np.int64),
            a=np.full(n + nv, -1, np.int64), group=np.concatenate([dom_idx, gv]).astype(np.int64),
            split=np.concatenate([np.full(n, SPLITS["train"]), np.full(nv, SPLITS["val"])]).astype(np.int8),
            ids=np.arange(n + nv).astype(str).astype(object), class_names=[str(c) for c in self.classes_],
            group_names=[str(g) for g in range(n_groups)], path="<arrays>")
        cls = OBJECTIVES[self.method]
        own = {k: getattr(self, k) for k in ("alpha", "beta", "lam", "eta") if getattr(self, k) is not None}
        unused = set(own) - set(cls.hparams)
        if unused:
            raise ValueError(f"method {self.method!r} does not take {', '.join(sorted(unused))}")
        cfg = {"lr": self.lr, "weight_decay": self.weight_decay, "anneal": self.anneal, "seed": self.seed,
               "preprocess": self.preprocess, **cls.hparams, **own}
        check_grid({k: [v] for k, v in cfg.items()})
        st = Settings(steps=self.steps, batch_size=self.batch_size, optimizer=self.optimizer, ce_weighting=self.ce_weighting,
                      eval_every=self.eval_every if has_val else self.steps, patience=self.patience if has_val else 0,
                      select=self.select, normalize=self.normalize, hessian_method=self.hessian_method,
                      pca_dim=self.pca_dim, device=resolve_device(self.device), dtype=getattr(torch, self.dtype))
        row = fit_method(fs, self.method, [cfg], st)[0]
        self.coef_ = row["_theta"]
        self.preprocessor_ = Preprocessor(self.preprocess, self.pca_dim, dict(row["_pre"]))
        self.result_ = {k: v for k, v in row.items() if not k.startswith("_") and k != "metrics"}
        self.result_["metrics"] = {"train": row["metrics"]["train"],
                                   "val": row["metrics"]["val"] if has_val else None}
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """(N, C) logits."""
        Z = self.preprocessor_.transform(torch.as_tensor(np.asarray(X, np.float32)).to(self.coef_.dtype))
        return moments.logits(self.coef_, Z).numpy()

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        z = self.decision_function(X)
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes_[self.decision_function(X).argmax(1)]
