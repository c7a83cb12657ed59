"""The fit pipeline behind `probe fit`: settings, plans, the fit, selection, the run folder.

:func:`fit_grid` fits each method's hyperparameter grid in one batched run, selects by
validation and (optionally) writes the run folder; the CLI is a thin layer over it, and
:mod:`probe.api` re-exports it. :func:`make_settings` is the one place that turns
keyword settings (fields and the options that methods and preprocessing kinds own) into
:class:`probe.train.settings.Settings`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from base.device import resolve_device
from base.errors import UserError
from base.io import NoSpace
from features.store import FeatureSet, read_features
from probe.domains import get_source, resolve, restrict
from probe.fitting.dispatch import check_regime, fit_method, plan_method, progress_units, remaining
from probe.fitting.plan import uses_solver
from probe.methods import (
    GradientMethod,
    all_params,
    checked_settings,
    get_method,
    parse_methods,
)
from probe.methods.protocols import Resolved, resolve_for
from probe.records.fitset import FitSet
from probe.records.results import Result, parse_results, sort_results
from probe.records.summary import Summary
from probe.runs.folder import RunSpec, provenance
from probe.runs.resume import RunSession, data_fingerprint, fit_fingerprint, fit_no_space_message
from probe.train.data import SplitCache, validate_for_fit
from probe.train.settings import Settings, check_dtype


def check_grid(grid: dict[str, Any]) -> dict[str, list[Any]]:
    """Validate a grid given through the API (values, lists or range text per hyperparameter)."""
    params = all_params()
    out = {}
    for key, values in grid.items():
        if key not in params:
            raise UserError(f"unknown hyperparameter {key!r}; choose from {', '.join(sorted(params))}")
        out[key] = params[key][0][1].values(values)
    return out


def make_settings(device: str = "auto", dtype: str = "float32", **settings: Any) -> Settings:
    """Settings from keywords (:func:`probe.methods.checked_settings`: Settings' own fields
    and the options methods and preprocessing kinds declare, each checked), on the device
    and in the dtype named."""
    check_dtype(dtype)
    return checked_settings(resolve_device(device), getattr(torch, dtype), **settings)


@dataclass
class MethodPlan:
    """One method's part of a fit: its settings, configurations and chunks."""

    settings: Settings
    configs: list[dict[str, Any]]
    chunks: Any


def plan_fit(fs: FeatureSet, names: list[str], grid: dict[str, list[Any]], settings: dict[str, Any],
             device: str, dtype: str, protocol: Resolved | None) -> tuple[FitSet, dict[str, MethodPlan]]:
    """The file with the fit's domains resolved, and every method's settings (the
    protocol's, then the user's) and configurations (the protocol's grid, then the user's
    values, then the method's defaults), planned once so the progress total and the fit
    agree on the chunks."""
    plans = {}
    fit_set: FitSet | None = None
    for m in names:
        base = {**protocol.settings, **protocol.method_settings.get(m, {})} if protocol else {}
        st = make_settings(device, dtype, **{**base, **settings})
        check_regime(get_method(m), st)
        if fit_set is None:
            validate_for_fit(restrict(fs, st.group_labels))
            fit_set = resolve(fs, st.domain, st)
        elif st.domain != fit_set.domain_source:
            raise UserError(f"`domain` {st.domain} for {m} differs from the fit's {fit_set.domain_source}; one fit "
                            "has one set of domains")
        own = get_method(m).hyperparameters()
        values = {**(protocol.grids.get(m, {}) if protocol else {}), **{k: v for k, v in grid.items() if k in own}}
        configs = get_method(m).configs(values, st.steps, st.search, st.search_seed)
        check_regime(get_method(m), st, configs)
        plans[m] = MethodPlan(st, configs, plan_method(fit_set, m, configs, st))
    assert fit_set is not None  # names is never empty (parse_methods)
    reference = plans[names[0]].settings.reference
    if reference is not None and reference not in names:
        raise UserError(f"`reference` {reference!r} is not a method of this fit ({', '.join(names)}); name one of them")
    return fit_set, plans


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
    ce_weighting, ...). ``protocol`` (``probe.methods.protocols``) sets methods, grids, seeds and
    settings for the file's dataset; ``methods``, ``grid`` and ``settings`` override it.
    ``progress`` (optional) has ``total(n)`` and ``advance(n)``, counted in steps × chunks;
    ``notify`` (optional) receives one-line messages (the resolved protocol).

    With ``out``, every finished chunk is kept durably (``probe.runs.resume``): the same call
    after a crash or a kill fits only what is left and writes the same run; a folder
    that holds this very fit, complete, is returned as it is.

    Returns ``{"summary": Summary | None, "rows": {method: [Result]}}`` (the summary, a
    :class:`probe.records.summary.Summary`, when ``out`` is given). On Ctrl-C
    (KeyboardInterrupt) the configurations of every chunk that finished are
    written (unfinished ones are left out), unless that would replace a complete
    previous run, and the exception propagates.
    """
    grid = check_grid(grid or {})
    make_settings(device, dtype, **settings)  # every setting checked before the file is read
    raw = features if isinstance(features, FeatureSet) else read_features(features, allow_incomplete)
    fs = raw
    resolved = resolve_for(protocol, fs, settings) if protocol is not None else None
    names = parse_methods(methods if methods is not None else resolved.methods if resolved else "")
    if resolved is not None:
        resolved = resolved.restrict(names)
    fs, plans = plan_fit(fs, names, grid, settings, device, dtype, resolved)
    st = plans[names[0]].settings  # selection settings are the same for every method
    check_method_settings(fs, plans)
    if resolved is not None and notify is not None:  # what will run, not what the protocol would alone
        notify(resolved.describe(st.public(), {m: len(p.configs) for m, p in plans.items()}, [*grid, *settings]))
    prov = _provenance(fs, plans, st, command, grid, resolved,
                       {"grid": grid, "settings": settings, **({"methods": methods} if methods is not None else {})})
    if out is None:
        rows = _fit_plans(fs, plans, progress, {}, None)
        return {"summary": None, "rows": rows}
    out_path = Path(out)
    spec = RunSpec(fs, prov, st.select, st.ties, st.group_labels, domains_record(fs, raw))
    fingerprint = fit_fingerprint(data_fingerprint(fs), _plan_record(plans, resolved))
    rows: dict[str, list[Result]] = {}
    try:
        with RunSession(out_path, fingerprint, overwrite) as session:
            if session.complete:
                if notify is not None:
                    notify(f"{out_path} already holds this fit, complete; nothing to fit (`overwrite` fits it "
                           "again)")
                return {"summary": Summary.from_json(json.loads((out_path / "summary.json").read_text(
                            encoding="utf-8"))),
                        "rows": _rows_by_method(out_path / "results.jsonl", names)}
            try:
                _fit_plans(fs, plans, progress, session.finished(), session, rows)
                return {"summary": session.commit(rows, spec), "rows": {m: sort_results(r) for m, r in rows.items()}}
            except UserError:  # refused while fitting (`isr_dims` beyond the span): no empty journal is left
                session.drop_if_empty()
                raise
            except KeyboardInterrupt as exc:
                if any(rows.values()) and session.keep_partial():
                    session.commit({m: r for m, r in rows.items() if r}, spec, complete=False)
                    exc.probe_written = str(out_path)  # type: ignore[attr-defined]  # for the CLI's message
                exc.probe_kept = sum(map(len, rows.values()))  # type: ignore[attr-defined]
                raise
    except NoSpace as exc:
        raise UserError(fit_no_space_message(exc, out_path, sum(map(len, rows.values())))) from exc


def _fit_plans(fs: FitSet, plans: dict[str, MethodPlan], progress: Any, done: dict[str, dict[int, Result]],
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


def domains_record(fs: FitSet, raw: FeatureSet) -> dict[str, Any]:
    """summary.json's record of the fit's domains: their source and names, whether they were
    inferred and, when the file has the training rows' groups, how well they agree with
    them (the adjusted Rand index: read after the fit, to report, never by it)."""
    inferred = get_source(fs.domain_source).inferred
    train = raw.split_mask("train")
    truth = raw.group[train]
    ari = adjusted_rand_index(truth, fs.domain[train]) if (truth >= 0).all() else None
    return {"source": fs.domain_source, "names": list(fs.domain_names), "inferred": inferred, "ari_train": ari}


def adjusted_rand_index(a: np.ndarray, b: np.ndarray) -> float:
    """Hubert and Arabie's adjusted Rand index of two labelings (scikit-learn's
    ``adjusted_rand_score``, without importing scikit-learn into every fit: over a second)."""
    _, ia = np.unique(a, return_inverse=True)
    _, ib = np.unique(b, return_inverse=True)
    table = np.zeros((ia.max() + 1, ib.max() + 1), np.int64)
    np.add.at(table, (ia, ib), 1)

    def pairs(x: np.ndarray) -> float:
        x = x.astype(np.float64)
        return float((x * (x - 1) / 2).sum())

    index, rows, cols, n = pairs(table), pairs(table.sum(1)), pairs(table.sum(0)), pairs(np.array([len(a)]))
    expected = rows * cols / n if n else 0.0
    top = (rows + cols) / 2
    return 1.0 if top == expected else (index - expected) / (top - expected)



def check_method_settings(fs: FeatureSet, plans: dict[str, MethodPlan]) -> None:
    """Settings (and methods) that cannot work for this file, found before anything is fitted."""
    for m, p in plans.items():
        get_method(m).check_features(fs, p.settings)
    for m, p in plans.items():  # `solver` lbfgs with a method it cannot fit
        cls = get_method(m)
        if issubclass(cls, GradientMethod):
            uses_solver(cls, p.settings)
