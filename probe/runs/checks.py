"""Diagnostics: what a reviewer would check before believing a method's figure, found first.

Each is derived from the result rows (results.jsonl) and the run's settings, so a report
on an older run computes them as the fit does. A diagnostic is ``{"code", "message"}``;
the codes (``CODES``) and when each fires:

* ``first_checkpoint``: the kept head is the first checkpoint its selection could keep
  (validation was best before training went far): evaluate more often, or check the run's
  start; ``last_checkpoint``: it is the last step's (it may still improve): more steps.
  Only where checkpoints are selected (the stochastic trainer, ``select_checkpoint`` best).
* ``grid_edge``: a selected value is the smallest or largest of three or more searched
  values: the grid may not contain the best one. Not for a value at its parameter's declared
  bound (``anneal`` 0: there is nothing beyond it), and not under ``search`` random:N (the
  draws are spread at random, so the chosen one is often the smallest or largest by chance).
* ``val_ties``: several configurations tie on the selection score; the tie-break chose.
* ``small_val_group``: a validation group has fewer than ``SMALL_GROUP`` rows (or none):
  its accuracy moves in large steps and so does WGA.
* ``penalty_inert``: the weighted penalty never exceeded ``INERT`` of the cross-entropy
  while the kept head trained, or the kept head predicts at most ``INERT`` of the
  validation rows otherwise than its penalty-free counterpart at the same step (trained on
  the same batches beside it): the penalty changed nothing a reader would see.
* ``penalty_dominant``: at the kept checkpoint the weighted penalty is more than
  ``DOMINANT`` times the cross-entropy (the labels barely steer the head: configurations
  whose weights differ by a common factor train alike), or a configuration's kept head has
  a training cross-entropy (on every training row, as scored) above ``PRIOR_MARGIN`` times
  the class prior's: confidently wrong, worse than knowing nothing (the rule that marks such
  a head ``collapsed``, probe.records.metrics.confidently_wrong).
* ``budget_mismatch``: a method chose among candidate heads (configurations × checkpoints)
  ``MISMATCH``× more or fewer than some other compared method: the larger budget has more
  chances to fit validation noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from probe.records.metrics import PRIOR_MARGIN
from probe.records.results import SELECTABLE, Result

CODES = ("first_checkpoint", "last_checkpoint", "grid_edge", "val_ties", "small_val_group", "penalty_inert",
         "penalty_dominant", "budget_mismatch")
SMALL_GROUP = 20
INERT = 0.01
DOMINANT = 100.0
MISMATCH = 10.0


def diagnostic(code: str, message: str) -> dict[str, str]:
    assert code in CODES, code
    return {"code": code, "message": message}


def eligible_steps(row: Result) -> list[int]:
    """The evaluation steps at which ``row``'s head could be kept (after its anneal)."""
    anneal = int(row.hparams.get("anneal") or 0)
    return [int(s) for s in row.history.get("step") or [] if s is not None and int(s) > anneal]


def budget(rows: Sequence[Result], settings: dict[str, Any]) -> dict[str, int]:
    """``{"configs", "checkpoints", "candidates"}``: distinct configurations (seeds apart),
    the most checkpoints one could keep, and every head the selection chose among."""
    by_config: dict[str, int] = {}
    for r in rows:
        checkpoints = 1
        if _checkpoints_selected(r, settings):
            checkpoints = max(1, len(eligible_steps(r)))
        by_config[r.config_key] = max(by_config.get(r.config_key, 0), checkpoints)
    return {"configs": len(by_config), "checkpoints": max(by_config.values(), default=0),
            "candidates": sum(by_config.values())}


def _checkpoints_selected(row: Result, settings: dict[str, Any]) -> bool:
    """Trained by the stochastic loop with its best checkpoint kept (the solver's and the
    closed-form methods' rows have one head each)."""
    return ("optimizer" in row.hparams and settings.get("select_checkpoint", "best") == "best"
            and len(row.history.get("step") or []) > 1)


def prior_ce(rows: Sequence[Result]) -> float | None:
    """The training cross-entropy of the constant head that predicts the class frequencies
    (the entropy of the training classes), from a row's per-class counts (None for rows
    written before those were recorded)."""
    for r in rows:
        per_class = (r.split("train") or {}).get("per_class") or {}
        n = [d.get("n") or 0 for d in per_class.values()]
        if sum(n):
            return -sum(k / sum(n) * math.log(k / sum(n)) for k in n if k)
    return None


#: a hyperparameter's declared bounds (probe.records.grid.Param minimum, maximum: None for none)
Bounds = dict[str, tuple[float, float | None]]


def method_checks(rows: Sequence[Result], selected: Sequence[str], settings: dict[str, Any],
                  penalties: dict[str, str], ties: int, bounds: Bounds | None = None) -> list[dict[str, str]]:
    """The diagnostics of one method (all but ``budget_mismatch``, which compares methods).
    ``selected``: the run ids of its selected configuration; ``penalties``: its penalty terms
    and the hyperparameter weighting each; ``ties``: how many configurations tie at the top;
    ``bounds``: its hyperparameters' declared bounds (a value there is no grid edge)."""
    chosen = [r for r in rows if r.run_id in set(selected)]
    out: list[dict[str, str]] = []
    if chosen:
        out += _checkpoint_checks(chosen, settings)
        if str(settings.get("search") or "grid") == "grid":
            out += _edge_checks(rows, chosen[0], bounds or {})
        out += _penalty_checks(rows, chosen, penalties, prior_ce(rows))
        out += _small_groups(chosen[0])
    if ties > 1:
        rule = settings.get("select", "val_wga")
        out.append(diagnostic("val_ties", f"{ties} configurations tie on {rule}; the tie-break "
                                          f"({settings.get('ties', 'acc')}) chose among them"))
    return out


def _checkpoint_checks(chosen: Sequence[Result], settings: dict[str, Any]) -> list[dict[str, str]]:
    kept = [r for r in chosen if _checkpoints_selected(r, settings)]
    firsts = [r for r in kept if eligible_steps(r) and r.best_step == eligible_steps(r)[0]]
    lasts = [r for r in kept if eligible_steps(r) and r.best_step == eligible_steps(r)[-1]
             and r.best_step >= int(r.hparams.get("steps") or 0)]
    out = []
    if firsts:
        step = firsts[0].best_step
        out.append(diagnostic("first_checkpoint", f"the kept head is the first checkpoint it could keep (step {step}, "
                                                  f"{len(firsts)} of {len(kept)} seeds): validation was best before "
                                                  "training went far; evaluate more often (`eval_every`) and look "
                                                  "at the curves"))
    if lasts:
        out.append(diagnostic("last_checkpoint", f"the kept head is the last step's ({lasts[0].best_step}, "
                                                 f"{len(lasts)} of {len(kept)} seeds): it may still improve; "
                                                 "give more `steps`"))
    return out


def _edge_checks(rows: Sequence[Result], head: Result, bounds: Bounds) -> list[dict[str, str]]:
    values: dict[str, set] = {}
    for r in rows:
        for k, v in r.hparams.items():
            if k != "seed" and isinstance(v, (int, float)) and not isinstance(v, bool):
                values.setdefault(k, set()).add(float(v))
    edges = []
    for k, vals in values.items():
        v = head.hparams.get(k)
        if (len(vals) >= 3 and isinstance(v, (int, float)) and float(v) in (min(vals), max(vals))
                and float(v) not in bounds.get(k, ())):  # at a declared bound: nothing lies beyond
            edges.append(f"{k}={v:g} ({'smallest' if float(v) == min(vals) else 'largest'} of {len(vals)})")
    if not edges:
        return []
    return [diagnostic("grid_edge", f"selected at the edge of the searched values: {', '.join(edges)}; widen the "
                                    "grid there")]


def _weighted_penalty(row: Result, penalties: dict[str, str], i: int) -> float | None:
    terms = row.history.get("penalty") or {}
    total, seen = 0.0, False
    for term, weight in penalties.items():
        series = terms.get(term)
        w = row.hparams.get(weight)
        if series and i < len(series) and series[i] is not None and isinstance(w, (int, float)):
            total += float(w) * float(series[i])
            seen = True
    return total if seen else None


def _ratios(row: Result, penalties: dict[str, str], up_to: int) -> list[float]:
    """Weighted penalty / CE at each logged step with the penalty on, up to ``up_to``."""
    anneal = int(row.hparams.get("anneal") or 0)
    out = []
    for i, (step, ce) in enumerate(zip(row.history.get("step") or [], row.history.get("ce") or [], strict=False)):
        pen = _weighted_penalty(row, penalties, i)
        if step is None or int(step) <= anneal or int(step) > up_to or pen is None or not ce:
            continue
        out.append(pen / float(ce))
    return out


def _penalty_checks(rows: Sequence[Result], chosen: Sequence[Result], penalties: dict[str, str],
                    prior_ce: float | None) -> list[dict[str, str]]:
    if not penalties:
        return []
    out = []
    ratios = [x for r in chosen for x in _ratios(r, penalties, r.best_step)]
    changed = [d for r in chosen if (d := (r.penalty_free or {}).get("disagreement")) is not None]
    if ratios and max(ratios) < INERT:
        out.append(diagnostic("penalty_inert", f"the weighted penalty never exceeded {max(ratios):.2g}× the "
                                               "cross-entropy while the kept head trained: it is its penalty-free "
                                               "counterpart; raise the weights (or check `normalize`)"))
    elif changed and max(changed) <= INERT:
        out.append(diagnostic("penalty_inert", f"the kept head predicts {100 * max(changed):.2g}% of the validation "
                                               "rows otherwise than its penalty-free counterpart at the same step: "
                                               "the penalty changed nothing; raise the weights (or check "
                                               "`normalize`)"))
    at_kept = [x for r in chosen if (x := _at_kept(r, penalties)) is not None]
    if at_kept and min(at_kept) > DOMINANT:
        out.append(diagnostic("penalty_dominant", f"at the kept checkpoint the weighted penalty is "
                                                  f"{min(at_kept):.3g}× the cross-entropy: the labels barely "
                                                  "steer the head; lower the weights or `normalize` unit"))
    if prior_ce is None:
        return out
    worse = {r.config_key for r in rows if (ce := _train_ce(r)) is not None and ce > PRIOR_MARGIN * prior_ce}
    if worse:
        out.append(diagnostic("penalty_dominant", f"{len(worse)} of {len({r.config_key for r in rows})} "
                                                  "configurations kept a head whose training cross-entropy is "
                                                  f"above {PRIOR_MARGIN:g}× the class prior's ({prior_ce:.3g}): "
                                                  "confidently wrong, worse than knowing nothing; the penalty won"))
    return out


def _at_kept(row: Result, penalties: dict[str, str]) -> float | None:
    steps = row.history.get("step") or []
    if row.best_step not in steps:
        return None
    i = steps.index(row.best_step)
    pen, ce = _weighted_penalty(row, penalties, i), (row.history.get("ce") or [None] * len(steps))[i]
    return pen / float(ce) if pen is not None and ce else None


def _train_ce(row: Result) -> float | None:
    """The kept head's mean cross-entropy on every training row, as scoring recorded it
    (pooled, whatever weighting the method trained with; None when not recorded)."""
    ce = (row.split("train") or {}).get("ce")
    ok = isinstance(ce, (int, float)) and math.isfinite(float(ce)) and row.status in (*SELECTABLE, "collapsed")
    return float(ce) if ok else None


def _small_groups(head: Result) -> list[dict[str, str]]:
    val = head.split("val") or {}
    groups = val.get("per_group") or {}
    if val.get("wga") is None:  # the regime hides the validation groups: nothing to say about them
        return []
    small = [f"{g} ({d.get('n', 0)})" for g, d in groups.items() if (d.get("n") or 0) < SMALL_GROUP]
    if not small:
        return []
    return [diagnostic("small_val_group", f"validation groups with fewer than {SMALL_GROUP} rows: "
                                          f"{', '.join(small)}; their accuracy moves in large steps, and so does "
                                          "the selection")]


def budget_checks(budgets: dict[str, dict[str, int]]) -> dict[str, list[dict[str, str]]]:
    """``budget_mismatch`` for each method whose candidate heads number ``MISMATCH``× fewer
    (or more) than some other compared method's, naming those methods (a method within
    ``MISMATCH``× of every other is not flagged, however far apart the others are)."""
    counts = {m: b["candidates"] for m, b in budgets.items() if b.get("candidates")}
    out = {}
    for m, n in counts.items():
        far = [o for o, k in counts.items() if o != m and max(n, k) >= MISMATCH * min(n, k)]
        if not far:
            continue
        others = ", ".join(f"{o} among {counts[o]}" for o in far)
        out[m] = [diagnostic("budget_mismatch", f"{m} chose among {n} candidate heads, {others}: compare at "
                                                "equal budgets (`search` random:N, and the stochastic trainer "
                                                "with checkpoints for a convex baseline: `solver` adam)")]
    return out
