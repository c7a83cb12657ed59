"""Python API mirroring `probe fit` (for notebooks), scikit-learn style."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from features.store import SPLITS, FeatureSet, read_features
from probe import moments
from probe.device import resolve_device
from probe.dfr import fit_dfr
from probe.errors import UserError
from probe.grid import expand
from probe.objectives import OBJECTIVES
from probe.runs import prepare_run_dir, provenance, write_run
from probe.trainer import Settings, fit_method, validate_for_fit

#: every method `probe fit --method` accepts: the gradient-trained objectives and DFR
METHODS = [*sorted(OBJECTIVES), "dfr"]
#: per-head hyperparameters every method takes (the method's own come from its class)
COMMON = {"lr": [1e-2], "weight_decay": [1e-4], "anneal": [0], "seed": [0], "preprocess": ["standardize"]}
#: small default grids so `probe fit` without flags is useful and quick
DEFAULT_GRIDS: dict[str, dict[str, list[Any]]] = {
    "cma": {"alpha": [1e2, 1e3, 1e4], "beta": [1e1, 1e2, 1e3]},
    "irm": {"lam": [1e1, 1e2, 1e3]},
    "vrex": {"lam": [1e0, 1e1, 1e2]},
    "fishr": {"lam": [1e1, 1e2, 1e3]},
    "groupdro": {"eta": [1e-3, 1e-2, 1e-1]},
}


def method_grid(method: str, grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """The configurations one method fits: its own hyperparameters plus the common ones."""
    cls = OBJECTIVES[method]
    keys = list(cls.hparams) + list(COMMON)
    if not cls.penalized:
        keys.remove("anneal")
    values = {k: grid.get(k) or DEFAULT_GRIDS.get(method, {}).get(k) or COMMON.get(k) or [cls.hparams[k]]
              for k in keys}
    return expand(values)


def fit_grid(features: FeatureSet | str | Path, methods: list[str], grid: dict[str, list[Any]] | None = None,
             out: str | Path | None = None, *, overwrite: bool = False, allow_incomplete: bool = False,
             device: str = "auto", dtype: str = "float32", progress=None, **settings: Any) -> dict[str, Any]:
    """Fit every method's grid; write the run folder when ``out`` is given.

    Returns ``{"summary": ..., "rows": {method: [result rows]}}``. On Ctrl-C the
    configurations already finished are written before KeyboardInterrupt propagates.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise UserError(f"--method: unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    fs = features if isinstance(features, FeatureSet) else read_features(features, allow_incomplete)
    st = Settings(device=resolve_device(device), dtype=getattr(torch, dtype), **settings)
    validate_for_fit(fs, st.domain)
    out_path = Path(out) if out is not None else None
    if out_path is not None:
        prepare_run_dir(out_path, overwrite)
    configs = {m: method_grid(m, grid or {}) for m in methods if m != "dfr"}
    if progress is not None:
        progress.total(sum(len({(c["seed"], c["preprocess"]) for c in cs}) for cs in configs.values()) * st.steps)
    rows: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    prov = provenance(fs.provenance(), str(st.device), st.select)
    try:
        for m in methods:
            if m == "dfr":  # sklearn-based: one head per seed, C tuned inside
                rows[m].extend(_dfr_rows(fs, (grid or {}).get("seed") or COMMON["seed"]))
                continue
            fit_method(fs, m, configs[m], st, on_step=progress.advance if progress else None, results=rows[m])
    except KeyboardInterrupt:
        if out_path is not None and any(rows.values()):
            write_run(out_path, {m: r for m, r in rows.items() if r}, fs, prov, st.select)
        raise
    summary = write_run(out_path, rows, fs, prov, st.select) if out_path is not None else None
    return {"summary": summary, "rows": rows}


def _dfr_rows(fs: FeatureSet, seeds: list[int]) -> list[dict[str, Any]]:
    rows = []
    for i, s in enumerate(seeds):
        row = fit_dfr(fs, seed=int(s))
        row["run_id"] = f"dfr-{i:04d}"
        rows.append(row)
    return rows


class LinearHead:
    """One linear head fitted by one objective; scikit-learn conventions.

    >>> head = LinearHead(method="cma", alpha=1e3, beta=1e2).fit(X, y, domains)
    >>> head.predict(X_test)
    """

    def __init__(self, method: str = "erm", *, lr: float = 1e-2, weight_decay: float = 1e-4, steps: int = 1000,
                 batch_size: int = 512, anneal: int = 0, seed: int = 0, preprocess: str = "standardize",
                 device: str = "auto", **hparams: float) -> None:
        self.method, self.lr, self.weight_decay, self.steps = method, lr, weight_decay, steps
        self.batch_size, self.anneal, self.seed, self.preprocess, self.device = (
            batch_size, anneal, seed, preprocess, device)
        self.hparams = hparams

    def fit(self, X: np.ndarray, y: np.ndarray, domains: np.ndarray, X_val: np.ndarray | None = None,
            y_val: np.ndarray | None = None, groups_val: np.ndarray | None = None) -> LinearHead:
        X, y, domains = np.asarray(X, np.float32), np.asarray(y, np.int64), np.asarray(domains, np.int64)
        if X_val is None:
            X_val, y_val, groups_val = X, y, domains
        n, nv = len(y), len(y_val)
        n_dom = int(max(domains.max(), np.max(groups_val))) + 1
        fs = FeatureSet(
            features=np.concatenate([X, np.asarray(X_val, np.float32), np.asarray(X_val, np.float32)]),
            y=np.concatenate([y, y_val, y_val]), a=np.full(n + 2 * nv, -1, np.int64),
            group=np.concatenate([domains, groups_val, groups_val]),
            split=np.concatenate([np.full(n, SPLITS["train"]), np.full(nv, SPLITS["val"]),
                                  np.full(nv, SPLITS["test"])]).astype(np.int8),
            ids=np.arange(n + 2 * nv).astype(str).astype(object),
            class_names=[str(c) for c in range(int(max(y.max(), np.max(y_val))) + 1)],
            group_names=[str(g) for g in range(n_dom)], path="<arrays>")
        cfg = {"lr": self.lr, "weight_decay": self.weight_decay, "anneal": self.anneal, "seed": self.seed,
               "preprocess": self.preprocess, **OBJECTIVES[self.method].hparams, **self.hparams}
        st = Settings(steps=self.steps, batch_size=self.batch_size, device=resolve_device(self.device))
        row = fit_method(fs, self.method, [cfg], st)[0]
        self.coef_ = row["_theta"]
        self.preprocessing_ = row["_pre"]
        self.result_ = {k: v for k, v in row.items() if not k.startswith("_")}
        return self

    def _features(self, X: np.ndarray) -> torch.Tensor:
        from probe.preprocess import Preprocessor

        pre = Preprocessor(self.preprocess)
        pre.state = self.preprocessing_
        return pre.transform(torch.as_tensor(np.asarray(X, np.float32)))

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return moments.probabilities(self.coef_, self._features(X)).numpy()

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.predict_proba(X).argmax(1)

    def score(self, X: np.ndarray, y: np.ndarray) -> float:
        return float((self.predict(X) == np.asarray(y)).mean())
