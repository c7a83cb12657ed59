"""Model selection and the run folder (docs/results-format.md)."""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from base.errors import UserError
from base.io import atomic_path, check_writable_dir, write_json_atomic
from base.version import code_version
from probe.metrics import mean_metrics, mean_std
from probe.results import SELECTABLE, Result, write_results

SELECT_KEYS = {"val_wga": "wga", "val_acc": "acc"}
#: what marks a folder as holding a previous run
RUN_FILES = ("results.jsonl", "summary.json")


def holds_run(out: Path) -> bool:
    return any((out / f).exists() for f in RUN_FILES) or any((out / "heads").glob("*.safetensors"))


def prepare_run_dir(out: Path, overwrite: bool) -> None:
    """Refuse to replace a previous run unless asked; create the folder otherwise.

    Nothing of a previous run is deleted here: it is replaced file by file when the
    new results are written, so a fit that fails or is interrupted before its first
    configuration finishes leaves the old run intact.
    """
    check_writable_dir(out.parent if str(out.parent) else Path("."), "`out` parent")
    if out.exists() and not out.is_dir():
        raise UserError(f"`out` {out} is a file; give a folder for the run")
    if out.exists() and holds_run(out) and not overwrite:
        raise UserError(f"`out` {out} already holds a run; pass `overwrite` to replace it or choose another "
                        "folder")
    out.mkdir(exist_ok=True)
    (out / "heads").mkdir(exist_ok=True)


def select(rows: list[Result], select_by: str = "val_wga", ties: str = "first") -> list[Result] | None:
    """Group configurations by hyperparameters without the seed (``Result.config_key``);
    pick the group with the best mean validation score (``ties``: "first", the earlier
    configuration; "sem", the smaller standard error of the mean over seeds, ddof 1).
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
    best, best_key = None, (-1.0, 0.0)
    for members in groups.values():
        vals = [m.split("val")[metric] for m in members if m.split("val")[metric] is not None]
        score = sum(vals) / len(vals) if vals else -1.0
        key = (score, -_sem(vals) if ties == "sem" else 0.0)
        if key > best_key:
            best, best_key = members, key
    return best


def _sem(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    return (sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values)) ** 0.5


def summarize_method(rows: list[Result], select_by: str, ties: str = "first") -> dict[str, Any]:
    members = select(rows, select_by, ties)
    counts = {"n_configs": len(rows), "n_diverged": sum(r.status == "diverged" for r in rows),
              "n_collapsed": sum(r.status == "collapsed" for r in rows),
              "n_not_converged": sum(r.status == "not_converged" for r in rows)}
    if members is None:
        return {"selected": None, "metrics": None, "seeds": None, "head": None, **counts}
    hp = {k: v for k, v in members[0].hparams.items() if k != "seed"}
    splits = ("train", "val", "test")
    return {
        "selected": {"hparams": hp, "run_ids": [m.run_id for m in members]},
        "metrics": {s: mean_metrics([m.split(s) for m in members]) for s in splits},
        "seeds": {s: mean_std([m.split(s) for m in members if m.split(s)]) for s in splits},
        "head": None,
        **counts,
    }


def provenance(fs_prov: dict[str, Any], device: str, select_by: str, *, command: str | None = None,
               settings: dict[str, Any] | None = None, grid: dict[str, Any] | None = None) -> dict[str, Any]:
    """What produced a run: the features, probe and torch versions, the device, the
    command line (``sys.argv`` unless given) and the fit's settings and grid."""
    cmd = command if command is not None else shlex.join(["probe", *sys.argv[1:]])
    return {"features": fs_prov, **code_version(),
            "torch": torch.__version__, "device": device, "command": cmd,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "selection": select_by,
            "settings": settings or {}, "grid": grid or {}}


def write_run(out: Path, rows_by_method: dict[str, list[Result]], fs: Any, prov: dict[str, Any],
              select_by: str, ties: str = "first") -> dict[str, Any]:
    """Write heads, results.jsonl and summary.json (in that order, each atomically);
    then drop head files a previous run left for methods this run did not select."""
    methods = {}
    written = set()
    for method, rows in rows_by_method.items():
        summ = summarize_method(rows, select_by, ties)
        if summ["selected"] is not None:
            first = next(r for r in rows if r.run_id == summ["selected"]["run_ids"][0])
            head = out / "heads" / f"{method}.safetensors"
            _write_head(head, first, prov)
            written.add(head.name)
            summ["head"] = f"heads/{method}.safetensors"
        methods[method] = summ
    write_results(out / "results.jsonl", [r for rows in rows_by_method.values() for r in rows])
    summary = {"provenance": prov, "group_names": fs.group_names, "class_names": fs.class_names,
               "methods": methods}
    write_json_atomic(out / "summary.json", summary)
    for stale in (out / "heads").glob("*.safetensors"):
        if stale.name not in written:
            stale.unlink(missing_ok=True)
    return summary


def _write_head(path: Path, row: Result, prov: dict[str, Any]) -> None:
    """The selected head of the first seed and its preprocessing (docs/results-format.md)."""
    tensors = {"theta": row.theta.contiguous(), **{f"pre.{k}": v.contiguous() for k, v in (row.pre or {}).items()}}
    config = {**row.hparams, "method": row.method, "run_id": row.run_id}
    if row.tuned is not None:
        config["tuned"] = row.tuned
    meta = {"config": json.dumps(config, default=str), "method": row.method,
            "provenance": json.dumps(prov, default=str)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
