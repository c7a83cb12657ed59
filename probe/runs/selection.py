"""Model selection: which configuration of a method a run reports.

Configurations are grouped by their hyperparameters without the seed
(``Result.config_key``); the group with the best mean validation score is selected.
"""

from __future__ import annotations

from probe.records.results import SELECTABLE, Result
from probe.records.summary import Stat

SELECT_KEYS = {"val_wga": "wga", "val_acc": "acc"}


def select(rows: list[Result], select_by: str = "val_wga", ties: str = "acc") -> list[Result] | None:
    """Group configurations by hyperparameters without the seed (``Result.config_key``);
    pick the group with the best mean validation score (``ties``: "acc", the higher mean
    validation accuracy, then the earlier configuration; "first", the earlier one; "sem",
    the smaller standard error of the mean over seeds, ddof 1).
    Only rows whose status is in ``SELECTABLE`` take part ("ok", "not_converged"), or,
    when there are none, the collapsed ones (a collapsed head is never chosen over one
    that is not). Returns the chosen rows, or None."""
    metric = SELECT_KEYS[select_by]
    usable = [r for r in rows if r.status in SELECTABLE and r.split("val")]
    if not usable:
        usable = [r for r in rows if r.status == "collapsed" and r.split("val")]
    groups: dict[str, list[Result]] = {}
    for r in usable:
        groups.setdefault(r.config_key, []).append(r)
    best, best_key = None, None
    for members in groups.values():
        vals = [m.split("val")[metric] for m in members if m.split("val")[metric] is not None]
        if not vals:  # nothing to select it by
            continue
        score = round(sum(vals) / len(vals), 12)  # equal means that differ by rounding are ties
        sem = Stat.of(vals).sem or 0.0  # one seed: no spread, so no tie is broken by it
        key = (score, -sem if ties == "sem" else _mean_val_acc(members) if ties == "acc" else 0.0)
        if best_key is None or key > best_key:
            best, best_key = members, key
    return best


def _mean_val_acc(members: list[Result]) -> float:
    accs = [m.split("val").get("acc") for m in members]
    accs = [a for a in accs if a is not None]
    return sum(accs) / len(accs) if accs else -1.0
