"""The result record: one fitted configuration, as a typed row of ``results.jsonl``.

Every producer (the batched trainer, closed-form methods such as DFR) returns
:class:`Result` rows, and every consumer (selection, the run folder, reports)
reads them, through one JSON reader/writer, one configuration key and one sort
order. The on-disk format is in docs/results-format.md; rows written by earlier
versions (no ``tuned``, no ``bounds``) still load.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from base.errors import UserError
from base.io import NONFINITE_KEY, json_text, write_text_atomic

#: a configuration's fate: finished (for the full-batch solver: converged); finished but its
#: head collapsed (one class predicted, or saturated at chance: probe.records.metrics.collapsed_heads);
#: finished at a point that did not meet the solver's tolerance; its loss stopped being
#: finite; stopped by Ctrl-C
STATUSES = ("ok", "collapsed", "not_converged", "diverged", "interrupted")
#: the statuses whose heads take part in model selection: a head that did not converge is
#: still a trained head (the stochastic trainer's heads are never tested for convergence)
SELECTABLE = ("ok", "not_converged")


def final_status(status: str, collapsed: bool) -> str:
    """The status a head is recorded with: its fit's (the solver's statuses are spelled as
    ``STATUSES``), or "collapsed" for a head that finished (``SELECTABLE``) but collapsed on
    validation; every fitter records its rows' fate through this one rule."""
    return "collapsed" if collapsed and status in SELECTABLE else status
SPLIT_NAMES = ("train", "val", "test")
#: history series every gradient-trained row has (penalties go under "penalty")
HISTORY_KEYS = ("step", "loss", "ce", "val_wga", "val_acc", "val_worst_class")


def empty_history() -> dict[str, Any]:
    return {**{k: [] for k in HISTORY_KEYS}, "penalty": {}}


def canonical(value: Any) -> str:
    """One spelling per hyperparameter value: 1000 and 1000.0 are the same value."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return repr(float(value))
    return json.dumps(value, sort_keys=True, default=str)


def config_key(hparams: dict[str, Any]) -> str:
    """The configuration a row belongs to: its hyperparameters without the seed."""
    return json.dumps({k: canonical(v) for k, v in sorted(hparams.items()) if k != "seed"})


def run_id(method: str, index: int) -> str:
    return f"{method}-{index:04d}"


_RUN_ID = re.compile(r"^(.*)-(\d+)$")


@dataclass
class Result:
    """One configuration of one method, fitted (or not) with one seed."""

    method: str
    hparams: dict[str, Any]
    metrics: dict[str, dict[str, Any] | None] = field(default_factory=dict)  # split -> probe.records.metrics dict
    status: str = "ok"
    run_id: str = ""
    steps_run: int = 0
    best_step: int = 0  # step whose head is kept (0: no step, e.g. closed form)
    history: dict[str, Any] = field(default_factory=empty_history)
    tuned: dict[str, Any] | None = None  # what the method chose inside the fit (DFR's C)
    bounds: dict[str, Any] | None = None  # the transfer bound's terms on the kept head (probe.diagnostics.bounds)
    #: the kept head against its penalty-free counterpart (probe.fitting.loop.ChunkFit): {"step",
    #: "disagreement" (share of validation rows predicted otherwise), "curve"}
    penalty_free: dict[str, Any] | None = None
    #: the checkpoint each other selection rule would keep (probe.fitting.rule_checkpoints):
    #: {rule: {"step", "score", "test": {"wga", "acc"}}}; None where checkpoints are not chosen
    rule_checkpoints: dict[str, Any] | None = None
    #: the paths of values that were NaN or infinite when the row was first written (base.io.json_text),
    #: now null: kept through a re-read (the resume journal) so the rewritten row still says so
    nonfinite: list[str] | None = None
    # The head and its preprocessing, kept in memory for the run folder's heads/; not JSON.
    theta: Any = field(default=None, repr=False, compare=False)
    pre: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} is not one of {', '.join(STATUSES)}")

    @property
    def config_key(self) -> str:
        return config_key(self.hparams)

    @property
    def seed(self) -> Any:
        return self.hparams.get("seed")

    def split(self, name: str) -> dict[str, Any] | None:
        """One split's metrics (None for a split with no rows, or a row without it)."""
        return self.metrics.get(name)

    def sort_key(self) -> tuple[str, int, str]:
        """Method, then the configuration's index in its grid (``cma-0012`` → 12)."""
        m = _RUN_ID.match(self.run_id)
        return (self.method, int(m.group(2)), "") if m else (self.method, -1, self.run_id)

    def to_json(self) -> dict[str, Any]:
        out = {"run_id": self.run_id, "method": self.method, "hparams": self.hparams, "status": self.status,
               "steps_run": self.steps_run, "best_step": self.best_step, "metrics": self.metrics,
               "history": self.history}
        if self.tuned is not None:
            out["tuned"] = self.tuned
        if self.bounds is not None:
            out["bounds"] = self.bounds
        if self.penalty_free is not None:
            out["penalty_free"] = self.penalty_free
        if self.rule_checkpoints is not None:
            out["rule_checkpoints"] = self.rule_checkpoints
        if self.nonfinite:
            out[NONFINITE_KEY] = list(self.nonfinite)  # json_text adds the values not finite now
        return out

    @classmethod
    def from_json(cls, obj: Any) -> Result:
        """A row as written by :meth:`to_json` (or an earlier version); ValueError says what is wrong."""
        if not isinstance(obj, dict):
            raise ValueError("is not a JSON object")
        for key, kind in (("method", str), ("hparams", dict)):
            if not isinstance(obj.get(key), kind):
                raise ValueError(f"has no {key!r} {kind.__name__}")
        metrics = obj.get("metrics") or {}
        if not isinstance(metrics, dict) or any(v is not None and not isinstance(v, dict) for v in metrics.values()):
            raise ValueError("has 'metrics' that is not an object of splits")
        status = str(obj.get("status", "ok"))
        if status not in STATUSES:
            raise ValueError(f"has the unknown status {status!r}")
        history = obj.get("history")
        return cls(method=obj["method"], hparams=obj["hparams"], metrics=metrics, status=status,
                   run_id=str(obj.get("run_id", "")), steps_run=int(obj.get("steps_run") or 0),
                   best_step=int(obj.get("best_step") or 0),
                   history=history if isinstance(history, dict) else empty_history(),
                   tuned=obj.get("tuned") if isinstance(obj.get("tuned"), dict) else None,
                   bounds=obj.get("bounds") if isinstance(obj.get("bounds"), dict) else None,
                   penalty_free=obj.get("penalty_free") if isinstance(obj.get("penalty_free"), dict) else None,
                   rule_checkpoints=(obj.get("rule_checkpoints") if isinstance(obj.get("rule_checkpoints"), dict)
                                     else None),
                   nonfinite=_paths(obj.get(NONFINITE_KEY)))


def _paths(value: Any) -> list[str] | None:
    """A row's ``nonfinite`` list as read (None when absent or not a list)."""
    return [str(p) for p in value] if isinstance(value, list) and value else None


def sort_results(results: Iterable[Result], methods: Sequence[str] | None = None) -> list[Result]:
    """The one order of rows: by method (in ``methods`` order when given), then grid index."""
    order = {m: i for i, m in enumerate(methods or [])}
    return sorted(results, key=lambda r: (order.get(r.method, len(order)), *r.sort_key()))


def to_jsonl(results: Iterable[Result]) -> str:
    return "".join(json_text(r.to_json()) + "\n" for r in results)


def write_results(path: str | Path, results: Iterable[Result]) -> None:
    """results.jsonl, atomically."""
    write_text_atomic(path, to_jsonl(results))


def parse_results(text: str, where: str | Path) -> list[Result]:
    """Rows of a results.jsonl text; a damaged line is a UserError naming ``where`` and the line."""
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{where} line {lineno} is not valid JSON ({exc.msg}, column {exc.colno}); "
                            "the run folder is damaged, rerun `probe fit`") from exc
        try:
            rows.append(Result.from_json(obj))
        except (ValueError, TypeError) as exc:
            raise UserError(f"{where} line {lineno} {exc}; it is not a `probe fit` results file") from exc
    return rows
