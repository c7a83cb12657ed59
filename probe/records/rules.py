"""Selection rules: which score picks a head's checkpoint and a method's configuration.

A rule reads one metric of one split (``probe.records.metrics``) and declares the labels
that metric needs beyond the classes (``reads``, the keys of ``probe.domains.LABELS``),
so a run under an information regime that hides them refuses the rule before any work.
Every run records, for each method, what every rule would have selected (the report's
rules table); ``--select`` picks the headline rule among those that may head a run.

* ``val_wga``: worst-group accuracy on validation (needs validation groups);
* ``val_worst_class``: the worst per-class accuracy (recall) on validation: no groups
  needed (SubpopBench's "attribute no" rule), the default when no group label may be read;
* ``val_acc``: plain validation accuracy;
* ``oracle_test_wga``: test worst-group accuracy, an upper bound that peeks at the test
  split: recorded beside the others, never a headline.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    name: str
    help: str
    split: str  # the split whose metric it reads
    metric: str  # a key of probe.records.metrics.METRIC_KEYS
    reads: frozenset[str] = frozenset()
    headline: bool = True  # may be chosen with --select
    label: str = ""  # how tables name it


RULES: dict[str, Rule] = {r.name: r for r in (
    Rule("val_wga", "validation worst-group accuracy", "val", "wga", frozenset({"val_groups"}),
         label="validation WGA"),
    Rule("val_worst_class", "worst per-class validation accuracy (no group labels)", "val", "worst_class",
         label="validation worst-class accuracy"),
    Rule("val_acc", "validation accuracy", "val", "acc", label="validation accuracy"),
    Rule("oracle_test_wga", "test worst-group accuracy: an upper bound that reads the test split, never a "
         "selection to report", "test", "wga", headline=False, label="oracle test WGA (upper bound)"),
)}


def headline_rules() -> tuple[str, ...]:
    """The rules ``--select`` may name."""
    return tuple(n for n, r in RULES.items() if r.headline)


def rule_score(rule: Rule, metrics: dict[str, dict | None]) -> float | None:
    """A result row's score under ``rule`` (None when its split or metric is missing)."""
    split = metrics.get(rule.split) or {}
    value = split.get(rule.metric)
    return float(value) if isinstance(value, (int, float)) else None
