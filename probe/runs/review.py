"""What a reviewer reads beside each method's figure: its selection budget, its diagnostics,
and the 95% intervals of its test figures with the paired difference to the reference.

The fit calls :func:`annotate` when it writes the run; ``probe report`` calls it on a run
written before these existed (its diagnostics and budgets come from results.jsonl; its
intervals need the heads and the test rows, so an older run has none).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from probe.records.fitset import FitSet
from probe.records.results import Result
from probe.records.summary import MethodSummary
from probe.runs.checks import Bounds, budget, budget_checks, method_checks


def default_reference(methods: Sequence[str], given: str | None) -> str | None:
    """The method differences are measured against: the one given, else erm when in the run."""
    return given if given is not None else ("erm" if "erm" in methods else None)


def penalties_of(method: str) -> dict[str, str]:
    """A registered method's penalty terms and the hyperparameter weighting each ({} for
    none, or a method no longer registered)."""
    from probe.methods import REGISTRY

    cls = REGISTRY.get(method)
    return {t: p.weight for t, p in (getattr(cls, "penalties", None) or {}).items()}


def declared_bounds(method: str) -> Bounds:
    """A registered method's numeric hyperparameters and their declared bounds (minimum,
    maximum or None; {} for a method no longer registered)."""
    from probe.methods import REGISTRY

    cls = REGISTRY.get(method)
    return {n: (p.minimum, p.maximum) for n, p in (cls.hyperparameters().items() if cls else ()) if p.kind is not str}


def annotate(summaries: dict[str, MethodSummary], rows_by_method: dict[str, list[Result]], settings: dict[str, Any],
             fs: FitSet | None = None) -> None:
    """Fill each summary's budget and diagnostics and, with ``fs`` (the fit's data, the
    rows' heads at hand), its test intervals and paired difference to the reference."""
    select = str(settings.get("select") or "val_wga")
    for m, summ in summaries.items():
        rows = rows_by_method.get(m, [])
        summ.budget = budget(rows, settings)
        ties = ((summ.by_rule or {}).get(select) or {}).get("ties", 0)
        summ.diagnostics = method_checks(rows, summ.selected.run_ids if summ.selected else [], settings,
                                         penalties_of(m), ties, declared_bounds(m))
    for m, found in budget_checks({m: s.budget or {} for m, s in summaries.items()}).items():
        summaries[m].diagnostics = [*(summaries[m].diagnostics or []), *found]
    if fs is None:
        return
    from probe.runs.intervals import selected_intervals

    chosen = {m: [r for r in rows_by_method.get(m, []) if r.run_id in set(s.selected.run_ids)]
              for m, s in summaries.items() if s.selected is not None}
    reference = default_reference(list(chosen), settings.get("reference"))
    # the points the summary (and every table) shows, so that a difference is that of the figures shown
    points = {m: {k: test.get(k) for k in ("wga", "acc")} for m, s in summaries.items()
              if isinstance(test := s.metrics.get("test"), dict)}
    for m, figures in selected_intervals(fs, chosen, reference, points=points).items():
        test = summaries[m].metrics.get("test")
        if isinstance(test, dict):
            test["ci95"] = figures["ci95"]
        summaries[m].vs_reference = figures.get("vs_reference")
