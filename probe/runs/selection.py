"""Model selection: which configuration of a method a run reports, under each rule.

Configurations are grouped by their hyperparameters without the seed
(``Result.config_key``); the group with the best mean score under a selection rule
(``probe.records.rules``) is selected. The run reports the headline rule's choice and
records what every other rule the regime allows would have chosen (``by_rule``).
"""

from __future__ import annotations

from typing import Any

from probe.records.regimes import REGIMES
from probe.records.results import SELECTABLE, Result
from probe.records.rules import RULES, Rule, rule_score
from probe.records.summary import Stat


def select(rows: list[Result], select_by: str = "val_wga", ties: str = "acc") -> list[Result] | None:
    """Group configurations by hyperparameters without the seed (``Result.config_key``);
    pick the group with the best mean score under the rule ``select_by`` (``ties``: "acc",
    the higher mean validation accuracy, then the earlier configuration; "first", the
    earlier one; "sem", the smaller standard error of the mean over seeds, ddof 1).
    Only rows whose status is in ``SELECTABLE`` take part ("ok", "not_converged"), or,
    when there are none, the collapsed ones (a collapsed head is never chosen over one
    that is not). Returns the chosen rows, or None."""
    return ranked(rows, RULES[select_by], ties)[0]


def own_checkpoint(row: Result, rule: Rule) -> dict[str, Any] | None:
    """The checkpoint ``rule`` itself would keep of this head, when the fit recorded one
    (``Result.rule_checkpoints``: the stochastic trainer, keeping best checkpoints, for a
    rule other than the headline); None: the head's kept checkpoint is every rule's."""
    return (row.rule_checkpoints or {}).get(rule.name)


def _score(row: Result, rule: Rule) -> float | None:
    own = own_checkpoint(row, rule)
    return rule_score(rule, row.metrics) if own is None else own.get("score")


def ranked(rows: list[Result], rule: Rule, ties: str = "acc") -> tuple[list[Result] | None, int]:
    """The selected configuration's rows under ``rule`` and how many configurations tie
    with it on the score (1: it is alone at the top; 0: nothing selected); each head
    scored at the rule's own checkpoint where the fit recorded one."""
    usable = [r for r in rows if r.status in SELECTABLE and r.split(rule.split)]
    if not usable:
        usable = [r for r in rows if r.status == "collapsed" and r.split(rule.split)]
    groups: dict[str, list[Result]] = {}
    for r in usable:
        groups.setdefault(r.config_key, []).append(r)
    best, best_key, scores = None, None, []
    for members in groups.values():
        vals = [v for m in members if (v := _score(m, rule)) is not None]
        if not vals:  # nothing to select it by
            continue
        score = round(sum(vals) / len(vals), 12)  # equal means that differ by rounding are ties
        scores.append(score)
        sem = Stat.of(vals).sem or 0.0  # one seed: no spread, so no tie is broken by it
        key = (score, -sem if ties == "sem" else _mean_val_acc(members) if ties == "acc" else 0.0)
        if best_key is None or key > best_key:
            best, best_key = members, key
    return best, (scores.count(best_key[0]) if best_key is not None else 0)


def _mean_val_acc(members: list[Result]) -> float:
    accs = [(m.split("val") or {}).get("acc") for m in members]
    accs = [a for a in accs if a is not None]
    return sum(accs) / len(accs) if accs else -1.0


def by_rule(rows: list[Result], ties: str, regime: str) -> dict[str, Any]:
    """For every rule the regime allows (the oracle always: it reads only test labels), the
    configuration it selects and its test metrics (mean over seeds): ``{rule: {"hparams",
    "test": {"wga", "acc"}, "ties", "steps"}}``; a rule that selects nothing maps to None.
    Where the fit recorded each rule's own checkpoints, a rule chooses both the checkpoint
    and the configuration (``steps``: its checkpoints, one per seed); otherwise it chooses
    among configurations at their kept heads."""
    out: dict[str, Any] = {}
    for name, rule in RULES.items():
        if not rule.reads <= REGIMES[regime]:
            continue
        members, tied = ranked(rows, rule, ties)
        if members is None:
            out[name] = None
            continue
        owns = [own_checkpoint(m, rule) for m in members]
        tests = [(m.split("test") or {}) if own is None else (own.get("test") or {})
                 for m, own in zip(members, owns, strict=True)]
        out[name] = {"hparams": {k: v for k, v in members[0].hparams.items() if k != "seed"},
                     "test": {k: Stat.of(t.get(k) for t in tests).mean for k in ("wga", "acc")},
                     "ties": tied,
                     "steps": [m.best_step if own is None else own.get("step") for m, own in zip(members, owns,
                                                                                                strict=True)]}
    return out
