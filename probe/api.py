"""Python API mirroring `probe fit`, scikit-learn style.

* :func:`fit_grid` fits each method's hyperparameter grid in one batched run,
  selects by validation and (optionally) writes the run folder; the CLI is a thin
  layer over it.
* :class:`LinearHead` is one head as a scikit-learn estimator; its parameters are
  the registry's hyperparameters and the fit's settings.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin

from base.device import resolve_device
from base.errors import UserError
from base.io import NoSpace
from features.store import SPLITS, FeatureSet, read_features
from probe import moments
from probe.fitting import fit_method, plan_method, progress_units, remaining
from probe.methods import COMMON, GradientMethod, all_params, get_method, method_names
from probe.preprocess import Preprocessor
from probe.protocols import Resolved, resolve_for
from probe.results import Result, parse_results, sort_results
from probe.resume import RunSession, data_fingerprint, fit_fingerprint, fit_no_space_message
from probe.runs import provenance
from probe.train.data import SplitCache, validate_for_fit
from probe.train.settings import DTYPES, Settings, user_settings, uses_solver


def check_grid(grid: dict[str, Any]) -> dict[str, list[Any]]:
    """Validate a grid given through the API (values, lists or range text per hyperparameter)."""
    params = all_params()
    out = {}
    for key, values in grid.items():
        if key not in params:
            raise UserError(f"unknown hyperparameter {key!r}; choose from {', '.join(sorted(params))}")
        out[key] = params[key][0][1].values(values)
    return out


def parse_methods(methods: list[str] | str) -> list[str]:
    names = [m.strip() for m in methods.split(",")] if isinstance(methods, str) else list(methods)
    names = [m for m in names if m]
    if not names:
        raise UserError("`method`: no method given; choose from " + ", ".join(method_names()))
    for m in names:
        get_method(m)
    return list(dict.fromkeys(names))


def make_settings(device: str = "auto", dtype: str = "float32", **settings: Any) -> Settings:
    if dtype not in DTYPES:
        raise UserError(f"`dtype` {dtype!r} is not one of: {', '.join(DTYPES)}")
    known = {f.name for f in fields(Settings)} - {"device", "dtype"}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise UserError(f"unknown setting {unknown[0]!r}; choose from {', '.join(sorted(known))}")
    return Settings(device=resolve_device(device), dtype=getattr(torch, dtype), **settings)


@dataclass
class MethodPlan:
    """One method's part of a fit: its settings, configurations and chunks."""

    settings: Settings
    configs: list[dict[str, Any]]
    chunks: Any


def plan_fit(fs: FeatureSet, names: list[str], grid: dict[str, list[Any]], settings: dict[str, Any],
             device: str, dtype: str, protocol: Resolved | None) -> dict[str, MethodPlan]:
    """Every method's settings (the protocol's, then the user's) and configurations (the
    protocol's grid, then the user's values, then the method's defaults), planned once so
    the progress total and the fit agree on the chunks."""
    plans = {}
    for m in names:
        base = {**protocol.settings, **protocol.method_settings.get(m, {})} if protocol else {}
        st = make_settings(device, dtype, **{**base, **settings})
        validate_for_fit(fs, st.domain)
        own = get_method(m).hyperparameters()
        values = {**(protocol.grids.get(m, {}) if protocol else {}), **{k: v for k, v in grid.items() if k in own}}
        configs = get_method(m).configs(values, st.steps)
        plans[m] = MethodPlan(st, configs, plan_method(fs, m, configs, st))
    return plans


def fit_grid(features: FeatureSet | str | Path, methods: list[str] | str | None = None,
             grid: dict[str, Any] | None = None, out: str | Path | None = None, *, overwrite: bool = False,
             allow_incomplete: bool = False, device: str = "auto", dtype: str = "float32", progress: Any = None,
             command: str | None = None, protocol: str | None = None, notify: Any = None,
             **settings: Any) -> dict[str, Any]:
    """Fit every method's grid; write the run folder when ``out`` is given.

    ``grid`` maps hyperparameter names (those of ``probe.methods``: ``alpha``, ``beta``,
    ``lam``, ``eta``, ``anneal``, ``seed``, ``lr``, ``weight_decay``, ``preprocess``, ...)
    to values; missing ones take each method's default grid. ``settings`` are the
    fields of :class:`probe.train.settings.Settings` (steps, batch_size, optimizer,
    eval_every, patience, domain, select, normalize, hessian_method, pca_dim,
    ce_weighting, ...). ``protocol`` (``probe.protocols``) sets methods, grids, seeds and
    settings for the file's dataset; ``methods``, ``grid`` and ``settings`` override it.
    ``progress`` (optional) has ``total(n)`` and ``advance(n)``, counted in steps × chunks;
    ``notify`` (optional) receives one-line messages (the resolved protocol).

    With ``out``, every finished chunk is kept durably (``probe.resume``): the same call
    after a crash or a kill fits only what is left and writes the same run; a folder
    that holds this very fit, complete, is returned as it is.

    Returns ``{"summary": ..., "rows": {method: [Result]}}``. On Ctrl-C
    (KeyboardInterrupt) the configurations of every chunk that finished are
    written (unfinished ones are left out), unless that would replace a complete
    previous run, and the exception propagates.
    """
    grid = check_grid(grid or {})
    make_settings(device, dtype, **settings)  # every setting checked before the file is read
    fs = features if isinstance(features, FeatureSet) else read_features(features, allow_incomplete)
    resolved = resolve_for(protocol, fs) if protocol is not None else None
    names = parse_methods(methods if methods is not None else resolved.methods if resolved else "")
    plans = plan_fit(fs, names, grid, settings, device, dtype, resolved)
    st = plans[names[0]].settings  # selection settings are the same for every method
    check_method_settings(fs, names, st)
    if resolved is not None and notify is not None:
        notify(resolved.describe([*grid, *settings]))
    prov = _provenance(fs, plans, st, command, grid, resolved,
                       {"grid": grid, "settings": settings, **({"methods": methods} if methods is not None else {})})
    if out is None:
        rows = _fit_plans(fs, plans, progress, {}, None)
        return {"summary": None, "rows": rows}
    out_path = Path(out)
    fingerprint = fit_fingerprint(data_fingerprint(fs), _plan_record(plans, resolved))
    rows: dict[str, list[Result]] = {}
    try:
        with RunSession(out_path, fingerprint, overwrite) as session:
            if session.complete:
                if notify is not None:
                    notify(f"{out_path} already holds this fit, complete; nothing to fit (`overwrite` fits it "
                           "again)")
                return {"summary": json.loads((out_path / "summary.json").read_text(encoding="utf-8")),
                        "rows": _rows_by_method(out_path / "results.jsonl", names)}
            try:
                _fit_plans(fs, plans, progress, session.finished(), session, rows)
                return {"summary": session.commit(rows, fs, prov, st.select, st.ties),
                        "rows": {m: sort_results(r) for m, r in rows.items()}}
            except KeyboardInterrupt as exc:
                if any(rows.values()) and session.keep_partial():
                    session.commit({m: r for m, r in rows.items() if r}, fs, prov, st.select, st.ties,
                                   complete=False)
                    exc.probe_written = str(out_path)  # type: ignore[attr-defined]  # for the CLI's message
                exc.probe_kept = sum(map(len, rows.values()))  # type: ignore[attr-defined]
                raise
    except NoSpace as exc:
        raise UserError(fit_no_space_message(exc, out_path, sum(map(len, rows.values())))) from exc


def _fit_plans(fs: FeatureSet, plans: dict[str, MethodPlan], progress: Any, done: dict[str, dict[int, Result]],
               session: RunSession | None, rows: dict[str, list[Result]] | None = None) -> dict[str, list[Result]]:
    """Fit what ``done`` (the journal's rows) lacks, appending every finished row to ``rows``."""
    rows = {} if rows is None else rows
    jobs = []
    for m, p in plans.items():
        finished = done.get(m, {})
        if p.chunks is not None:
            rows[m] = list(finished.values())
            chunks = remaining(p.chunks, set(finished))
            if chunks:
                jobs.append((m, p, chunks))
        elif set(finished) >= set(range(len(p.configs))):  # closed form: taken whole from the journal...
            rows[m] = list(finished.values())
        else:  # ...or fitted whole
            rows[m] = []
            jobs.append((m, p, None))
    if progress is not None:
        progress.total(sum(progress_units(m, chunks, p.settings) for m, p, chunks in jobs))
    splits = SplitCache()  # a preprocessing is fitted once for every method that uses it
    for m, p, chunks in jobs:
        fit_method(fs, m, p.configs, p.settings, on_step=progress.advance if progress else None, results=rows[m],
                   chunks=chunks, splits=splits, on_chunk=session.save_chunk if session else None)
    return rows


def _plan_record(plans: dict[str, MethodPlan], resolved: Resolved | None) -> dict[str, Any]:
    """What decides a fit's results, for its fingerprint: not the device's number or the
    memory that decided the chunks, which change nothing."""
    def decisive(st: Settings) -> dict[str, Any]:
        pub = {k: v for k, v in st.public().items() if k not in ("max_heads", "memory_bytes")}
        return {**pub, "device": st.device.type}

    return {"methods": {m: {"settings": decisive(p.settings), "configs": p.configs} for m, p in plans.items()},
            "protocol": resolved.record({}) if resolved is not None else None}


def _provenance(fs: FeatureSet, plans: dict[str, MethodPlan], st: Settings, command: str | None,
                grid: dict[str, list[Any]], resolved: Resolved | None, given: dict[str, Any]) -> dict[str, Any]:
    prov = provenance(fs.provenance(), str(st.device), st.select, command=command, settings=st.public(),
                      grid=grid)
    per_method = {m: p.settings.public() for m, p in plans.items() if p.settings.public() != st.public()}
    if per_method:
        prov["method_settings"] = per_method
    if resolved is not None:
        prov["protocol"] = resolved.record(given)
    return prov


def _rows_by_method(path: Path, names: list[str]) -> dict[str, list[Result]]:
    rows: dict[str, list[Result]] = {m: [] for m in names}
    for r in parse_results(path.read_text(encoding="utf-8"), path):
        rows.setdefault(r.method, []).append(r)
    return rows


def check_method_settings(fs: FeatureSet, methods: list[str], st: Settings) -> None:
    """Settings (and methods) that cannot work for this file, found before anything is fitted."""
    for m in methods:
        get_method(m).check_features(fs)
    if st.hessian_method == "binary" and fs.num_classes != 2 and "cma" in methods:
        raise UserError(f"`hessian_method` binary needs two classes, {fs.path} has {fs.num_classes}; "
                        "use auto or kernel")
    for m in methods:  # `solver` lbfgs with a method it cannot fit
        cls = get_method(m)
        if issubclass(cls, GradientMethod):
            uses_solver(cls, st)


# --------------------------------------------------------------------------- estimator

#: settings a LinearHead passes on, with the API's spelling of device and dtype
_SETTINGS = [f.name for f in user_settings()]
_ESTIMATOR_DEFAULTS = {"device": "auto", "dtype": "float32"}


def _estimator_signature() -> inspect.Signature:
    """``LinearHead``'s parameters, read from the registry and the settings: the method,
    every method's own hyperparameters (None: the method's default), the shared ones
    with their defaults, then the settings."""
    P = inspect.Parameter
    params = [P("self", P.POSITIONAL_OR_KEYWORD), P("method", P.POSITIONAL_OR_KEYWORD, default="erm")]
    own = [n for n in all_params() if n not in COMMON]
    params += [P(n, P.KEYWORD_ONLY, default=None) for n in own]
    params += [P(n, P.KEYWORD_ONLY, default=p.default) for n, p in COMMON.items()]
    defaults = {f.name: f.default for f in fields(Settings)}
    params += [P(n, P.KEYWORD_ONLY, default=defaults[n]) for n in _SETTINGS]
    params += [P(n, P.KEYWORD_ONLY, default=v) for n, v in _ESTIMATOR_DEFAULTS.items()]
    return inspect.Signature(params)


class LinearHead(ClassifierMixin, BaseEstimator):
    """One linear softmax head fitted by one gradient method, scikit-learn style.

    Every hyperparameter is an explicit argument (``get_params``/``set_params``,
    ``sklearn.base.clone`` work): the method's own (``alpha``, ``beta`` for cma;
    ``lam`` for irm, vrex, fishr; ``eta`` for groupdro; None takes the method's
    default), the shared ones (``lr``, ``weight_decay``, ``anneal``, ``seed``,
    ``preprocess``) and the fit's settings (``steps``, ``batch_size``, ...). Fitted
    attributes end in ``_``: ``classes_``, ``coef_`` ((C, d+1) on the preprocessed
    features, bias last), ``preprocessor_`` and ``result_`` (the run's result record).

    >>> head = LinearHead(method="cma", alpha=1e3, beta=1e2).fit(X, y, domains)
    >>> head.predict(X_test)
    """

    def __init__(self, method: str = "erm", **params: Any) -> None:
        sig = type(self).__init__.__signature__  # type: ignore[attr-defined]
        unknown = set(params) - set(sig.parameters)
        if unknown:
            raise TypeError(f"LinearHead got unexpected parameters {sorted(unknown)}")
        self.method = method
        for name, p in list(sig.parameters.items())[2:]:
            setattr(self, name, params.get(name, p.default))

    __init__.__signature__ = _estimator_signature()  # type: ignore[attr-defined]

    def fit(self, X: np.ndarray, y: np.ndarray, domains: np.ndarray, X_val: np.ndarray | None = None,
            y_val: np.ndarray | None = None, groups_val: np.ndarray | None = None) -> LinearHead:
        """Fit on ``X`` (N, d) with labels ``y`` and ``domains`` (the penalties' domains,
        also the groups of the metrics). With a validation set (``X_val``, ``y_val``,
        ``groups_val``) the checkpoint with the best validation score is kept, as in
        `probe fit`; without one, the last step's head."""
        cls = get_method(self.method)
        if not issubclass(cls, GradientMethod):
            raise UserError(f"`method` {self.method!r} is not trained by gradient steps; LinearHead fits "
                            f"{', '.join(n for n in method_names() if issubclass(get_method(n), GradientMethod))}")
        fs, has_val = _estimator_features(self, X, y, domains, X_val, y_val, groups_val)
        takes = cls.hyperparameters()
        own = {p: getattr(self, p) for p in all_params() if p not in COMMON and getattr(self, p) is not None}
        unused = set(own) - set(takes)
        if unused:
            raise ValueError(f"method {self.method!r} does not take {', '.join(sorted(unused))}")
        cfg = {n: own.get(n, getattr(self, n, None)) for n in takes}
        cfg = {n: p.default if cfg[n] is None else cfg[n] for n, p in takes.items()}
        check_grid({k: [v] for k, v in cfg.items()})
        given = {n: getattr(self, n) for n in _SETTINGS}
        if not has_val:  # evaluated only at the last step, on the training rows
            given.update(eval_every=self.steps, patience=0)
        st = make_settings(self.device, self.dtype, **given)
        row = fit_method(fs, cls, [cfg], st)[0]
        self.coef_ = row.theta
        self.preprocessor_ = Preprocessor(cfg["preprocess"], self.pca_dim, dict(row.pre), self.isr_class,
                                          self.isr_dims)
        self.result_ = row
        if not has_val:
            row.metrics = {"train": row.metrics["train"], "val": None}
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """(N, C) logits."""
        Z = self.preprocessor_.transform(torch.as_tensor(np.asarray(X, np.float32)).to(self.coef_.dtype))
        return moments.logits(self.coef_, Z, self.bias).numpy()

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        z = self.decision_function(X)
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes_[self.decision_function(X).argmax(1)]


def _estimator_features(head: LinearHead, X: Any, y: Any, domains: Any, X_val: Any, y_val: Any,
                        groups_val: Any) -> tuple[FeatureSet, bool]:
    """The arrays as a FeatureSet (train, and val: the given one or the training rows)."""
    X = np.asarray(X, np.float32)
    head.classes_, y_idx = np.unique(np.asarray(y), return_inverse=True)
    _, dom_idx = np.unique(np.asarray(domains), return_inverse=True)
    if X.ndim != 2 or len(X) != len(y_idx) or len(dom_idx) != len(y_idx):
        raise ValueError(f"X (N, d), y and domains must have the same N; got {X.shape}, {len(y_idx)}, "
                         f"{len(dom_idx)}")
    has_val = X_val is not None
    if has_val:
        if y_val is None or groups_val is None:
            raise ValueError("X_val needs y_val and groups_val")
        Xv = np.asarray(X_val, np.float32)
        yv = np.searchsorted(head.classes_, np.asarray(y_val))
        if np.any(yv >= len(head.classes_)) or np.any(head.classes_[np.minimum(yv, len(head.classes_) - 1)]
                                                      != np.asarray(y_val)):
            raise ValueError("y_val has labels that y does not have")
        gv = np.asarray(groups_val, np.int64)
    else:
        Xv, yv, gv = X, y_idx, dom_idx
    n, nv = len(y_idx), len(yv)
    n_groups = int(max(dom_idx.max(), gv.max())) + 1
    fs = FeatureSet(
        features=np.concatenate([X, Xv]), y=np.concatenate([y_idx, yv]).astype(np.int64),
        a=np.full(n + nv, -1, np.int64), group=np.concatenate([dom_idx, gv]).astype(np.int64),
        split=np.concatenate([np.full(n, SPLITS["train"]), np.full(nv, SPLITS["val"])]).astype(np.int8),
        ids=np.arange(n + nv).astype(str).astype(object), class_names=[str(c) for c in head.classes_],
        group_names=[str(g) for g in range(n_groups)], path="<arrays>")
    return fs, has_val
