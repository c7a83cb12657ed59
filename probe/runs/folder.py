"""The run folder (docs/results-format.md): its state, its summary, its writing and its swap."""

from __future__ import annotations

import csv
import io
import json
import os
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save

from base.errors import UserError
from base.io import (
    check_writable_dir,
    fsync_path,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)
from base.version import code_version
from probe.records.fitset import FitSet
from probe.records.results import Result, sort_results, write_results
from probe.records.summary import (
    EVAL_SPLITS,
    MethodSummary,
    Selected,
    SplitSeeds,
    Summary,
    mean_metrics,
)
from probe.runs.layout import DOMAINS_FILE, RUN_FILES, named_files
from probe.runs.review import annotate
from probe.runs.selection import by_rule, select


@dataclass
class RunSpec:
    """What a run's summary needs besides its rows: the data the fit read, its provenance,
    the selection rule and tie-break, the information regime and the domains' record."""

    fs: FitSet
    provenance: dict[str, Any]
    select: str
    ties: str = "acc"
    group_labels: str = "all"
    domains: dict[str, Any] | None = None  # {"source", "names", "inferred", "ari_train"}


@dataclass(frozen=True)
class RunState:
    """What a folder holds: no run, a partial one (an interrupted fit's finished
    configurations) or a complete one; and the fingerprint of the fit that wrote it
    (None when unknown: written before fingerprints, or damaged)."""

    kind: str  # "none", "partial" or "complete"
    fingerprint: str | None = None
    files: tuple[str, ...] = ()  # the head and domain files it names (relative to the folder)


def run_state(out: Path) -> RunState:
    """The run ``out`` holds (a folder that may not exist)."""
    if not any((out / f).exists() for f in RUN_FILES):
        return RunState("none")
    try:
        summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return RunState("complete")  # damaged or half of one: a run all the same, of unknown origin
    if not isinstance(summary, dict):
        return RunState("complete")
    prov = summary.get("provenance") if isinstance(summary.get("provenance"), dict) else {}
    kind = "partial" if summary.get("complete") is False else "complete"
    return RunState(kind, prov.get("fingerprint"), named_files(summary))


def check_run_dir(out: Path) -> None:
    """Refuse an ``out`` that cannot be a run folder, naming what is in the way."""
    check_writable_dir(out.parent if str(out.parent) else Path("."), "`out` parent")
    if out.exists() and not out.is_dir():
        raise UserError(f"`out` {out} is a file; give a folder for the run")
    in_way = [out / f for f in RUN_FILES if (out / f).is_dir()]
    if (out / "heads").exists() and not (out / "heads").is_dir():
        in_way.append(out / "heads")
    if in_way:
        raise UserError(f"`out` {out} has {', '.join(map(str, in_way))} where the run's files go, and probe did "
                        "not write them; move them away or choose another folder")


def summarize_method(rows: list[Result], select_by: str, ties: str = "acc", regime: str = "all") -> MethodSummary:
    """One method's entry of summary.json: the configuration selection chooses, its
    metrics averaged over its seeds and their spread, the counts of every status, and what
    every rule the regime allows would have chosen."""
    members = select(rows, select_by, ties)
    counts = {"n_configs": len(rows), "n_diverged": sum(r.status == "diverged" for r in rows),
              "n_collapsed": sum(r.status == "collapsed" for r in rows),
              "n_not_converged": sum(r.status == "not_converged" for r in rows)}
    if members is None:
        return MethodSummary(None, counts=counts)
    hp = {k: v for k, v in members[0].hparams.items() if k != "seed"}
    return MethodSummary(
        Selected(hp, [m.run_id for m in members]),
        metrics={s: mean_metrics([m.split(s) for m in members]) for s in EVAL_SPLITS},
        seeds={s: SplitSeeds.of([m.split(s) for m in members if m.split(s)]) for s in EVAL_SPLITS},
        counts=counts, by_rule=by_rule(rows, ties, regime))


def provenance(fs_prov: dict[str, Any], device: str, select_by: str, *, command: str | None = None,
               settings: dict[str, Any] | None = None, grid: dict[str, Any] | None = None) -> dict[str, Any]:
    """What produced a run: the features, probe and torch versions, the device, the
    command line (``sys.argv`` unless given) and the fit's settings and grid."""
    cmd = command if command is not None else shlex.join(["probe", *sys.argv[1:]])
    return {"features": fs_prov, **code_version(),
            "torch": torch.__version__, "device": device, "command": cmd,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "selection": select_by,
            "settings": settings or {}, "grid": grid or {}}


def write_run(out: Path, rows_by_method: dict[str, list[Result]], spec: RunSpec, complete: bool = True) -> Summary:
    """Write heads, results.jsonl, summary.json (and domains.csv when the domains were
    inferred) into the folder ``out`` (each atomically; rows in the one order of
    ``sort_results``). ``complete`` False marks the finished configurations of an
    interrupted fit."""
    methods = {}
    (out / "heads").mkdir(parents=True, exist_ok=True)
    rows_by_method = {m: sort_results(rows) for m, rows in rows_by_method.items()}
    for method, rows in rows_by_method.items():
        summ = summarize_method(rows, spec.select, spec.ties, spec.group_labels)
        if summ.selected is not None:
            first = next(r for r in rows if r.run_id == summ.selected.run_ids[0])
            _write_head(out / "heads" / f"{method}.safetensors", first, spec.provenance)
            summ.head = f"heads/{method}.safetensors"
        methods[method] = summ
    annotate(methods, rows_by_method, spec.provenance.get("settings") or {}, spec.fs)
    write_results(out / "results.jsonl", [r for rows in rows_by_method.values() for r in rows])
    domains = dict(spec.domains) if spec.domains else None
    if domains and domains.get("inferred"):
        write_text_atomic(out / DOMAINS_FILE, domains_csv(spec.fs))
        domains["file"] = DOMAINS_FILE
    summary = Summary(spec.provenance, complete, list(spec.fs.group_names), list(spec.fs.class_names), methods,
                      group_labels=spec.group_labels, domains=domains)
    write_json_atomic(out / "summary.json", summary.to_json())
    return summary


def domains_csv(fs: FitSet) -> str:
    """Every training row's id and inferred domain, in file order, as CSV."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["id", "domain"])
    train = fs.split_mask("train")
    for row_id, d in zip(fs.ids[train], fs.domain[train], strict=True):
        writer.writerow([row_id, fs.domain_names[int(d)]])
    return buf.getvalue()


def publish(staging: Path, out: Path, stale: Sequence[str]) -> None:
    """Move a run written in ``staging`` into ``out``: heads, then results.jsonl, then
    summary.json (the file a reader trusts), then remove ``stale`` (the previous run's
    heads that the new one lacks). Only renames: no space is needed, and it can be
    repeated after a crash part-way (what has moved already is skipped). Files of
    ``out`` that are not part of a run are never touched."""
    (out / "heads").mkdir(exist_ok=True)
    moves = [(p, out / "heads" / p.name) for p in sorted((staging / "heads").glob("*.safetensors"))]
    moves += [(staging / f, out / f) for f in (DOMAINS_FILE, *RUN_FILES)]
    for src, dst in moves:
        if src.exists():
            os.replace(src, dst)
    fsync_path(out / "heads")
    for name in stale:
        (out / name).unlink(missing_ok=True)
    fsync_path(out)


def _write_head(path: Path, row: Result, prov: dict[str, Any]) -> None:
    """The selected head of the first seed and its preprocessing (docs/results-format.md)."""
    tensors = {"theta": row.theta.contiguous(), **{f"pre.{k}": v.contiguous() for k, v in (row.pre or {}).items()}}
    config = {**row.hparams, "method": row.method, "run_id": row.run_id}
    if row.tuned is not None:
        config["tuned"] = row.tuned
    meta = {"config": json.dumps(config, default=str), "method": row.method,
            "provenance": json.dumps(prov, default=str)}
    # Serialised here and written by Python, so a full disk is an OSError like any other write.
    write_bytes_atomic(path, save(tensors, metadata=meta))
