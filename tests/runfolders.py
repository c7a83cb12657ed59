"""Fake `probe fit` run folders (docs/results-format.md) for the report and plot tests.

Accuracies come from a made-up deterministic function of the hyperparameters,
turned into integer per-group counts, so every metric is a real fraction of
counts. Selection is done here independently of probe.reports (best mean
validation WGA over seeds, ties to the earlier configuration).

:func:`two_runs` is the folder pair most report tests share; :func:`expected` and
:func:`pct` compute what a report must show, independently of probe.reports.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
from pathlib import Path
from typing import Any

from probe.records.metrics import metrics_from_counts
from probe.records.summary import SplitSeeds, mean_metrics

GROUPS = ["landbird/land", "landbird/water", "waterbird/land", "waterbird/water"]
TRAIN_N = [3498, 184, 56, 1057]
SIZES = {"train": TRAIN_N, "val": [467, 466, 133, 133], "test": [2255, 2255, 642, 642]}
BASE = [0.97, 0.78, 0.70, 0.93]

CMA_GRID = {"alpha": [10.0, 100.0, 1000.0], "beta": [1.0, 10.0], "anneal": [0, 100]}
ERM_GRID = {"weight_decay": [0.0, 1e-4, 1e-3]}


def _acc(method: str, hp: dict[str, Any], seed: int, split: str, g: int) -> float:
    if method == "cma":
        boost = 0.04 * math.log10(hp["alpha"]) - 0.015 * hp["beta"] / 10 + 0.01 * (hp["anneal"] > 0)
    else:
        boost = 0.02 * (hp.get("weight_decay", 0.0) * 1e3) ** 0.5
    minority = g in (1, 2)
    acc = BASE[g] + (boost if minority else -boost / 5)
    acc += 0.006 * ((seed + g) % 3 - 1) + (0.01 if split == "val" else 0.0)
    return min(max(acc, 0.0), 1.0)


def _split_metrics(method: str, hp: dict[str, Any], seed: int, split: str) -> dict[str, Any]:
    total = SIZES[split]
    correct = [round(_acc(method, hp, seed, split, g) * n) for g, n in enumerate(total)]
    return metrics_from_counts(correct, total, TRAIN_N, GROUPS)


def _history(method: str, hp: dict[str, Any], steps: int) -> dict[str, Any]:
    step = list(range(0, steps + 1, steps // 10))
    ce = [0.7 * math.exp(-s / (steps / 3)) + 0.1 for s in step]
    pen = {"grad": [1e-2 * math.exp(-s / (steps / 5)) + 1e-5 for s in step],
           "hess": [5e-3 * math.exp(-s / (steps / 4)) + 1e-5 for s in step]} if method == "cma" else {}
    loss = [c + sum(hp.get(k, 0.0) * v[i] for k, v in (("alpha", pen.get("grad", [])),
                                                         ("beta", pen.get("hess", []))) if v)
            for i, c in enumerate(ce)]
    return {"step": step, "loss": loss, "ce": ce, "penalty": pen,
            "val_wga": [0.5 + 0.3 * (1 - math.exp(-s / (steps / 3))) for s in step],
            "val_acc": [0.8 + 0.1 * (1 - math.exp(-s / (steps / 3))) for s in step]}


def _bounds(method: str, hp: dict[str, Any], seed: int, steps: int) -> dict[str, Any]:
    """Made-up bound terms: the penalties shrink the distances, seeds move them a little."""
    shrink = 1.0 + hp.get("alpha", 0.0) / 100 + hp.get("beta", 0.0) / 10 + hp.get("gamma", 0.0)
    final = {t: round(v / shrink * (1 + 0.05 * seed), 6) for t, v in (("grad", 0.2), ("hess", 0.05),
                                                                      ("third", 0.01))}
    step = list(range(0, steps + 1, steps // 10))
    curve = {t: [round(v * (1 + 2 * math.exp(-s / (steps / 4))), 6) for s in step] for t, v in final.items()}
    return {"domain": "group", "rows": sum(TRAIN_N), "train_rows": sum(TRAIN_N), "step": steps - steps // 10,
            "losses": {g: round(0.05 + 0.1 * (i in (1, 2)) + 0.01 * seed, 6) for i, g in enumerate(GROUPS)},
            **final, "pairs": {t: [GROUPS[0], GROUPS[2]] for t in final},
            **({"curve": {"rows": 1024, "step": step, **curve}} if method != "dfr" else {})}


def write_run_folder(
    path: Path, methods: dict[str, dict[str, list[Any]]], seeds: tuple[int, ...] = (0, 1),
    diverged: dict[str, dict[str, Any]] | None = None, steps: int = 300, bounds: bool = False,
) -> dict[str, Any]:
    """Write results.jsonl and summary.json for ``methods`` (name -> grid) into ``path``.

    ``diverged`` adds one configuration per method whose every seed diverged; ``bounds``
    gives every row made-up bound terms (results.jsonl ``bounds``).
    Returns {"selected": {method: hparams}, "rows": {method: [selected rows]}}.
    """
    path.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    summary_methods: dict[str, Any] = {}
    selected: dict[str, Any] = {}
    selected_rows: dict[str, list[dict[str, Any]]] = {}
    for method, grid in methods.items():
        keys = list(grid)
        configs = [dict(zip(keys, vals, strict=True)) for vals in itertools.product(*grid.values())]
        by_config: list[list[dict[str, Any]]] = []
        for hp in configs:
            seed_rows = []
            for seed in seeds:
                row = {
                    "run_id": f"{method}-{len(rows):04d}", "method": method,
                    "hparams": {**hp, "seed": seed, "lr": 0.001, "steps": steps},
                    "status": "ok", "steps_run": steps, "best_step": steps - steps // 10,
                    "metrics": {s: _split_metrics(method, hp, seed, s) for s in SIZES},
                    "history": _history(method, hp, steps),
                }
                if bounds:
                    row["bounds"] = _bounds(method, hp, seed, steps)
                rows.append(row)
                seed_rows.append(row)
            by_config.append(seed_rows)
        for hp in (diverged or {}).get(method, []):
            for seed in seeds:
                rows.append({
                    "run_id": f"{method}-{len(rows):04d}", "method": method,
                    "hparams": {**hp, "seed": seed, "lr": 0.001, "steps": steps},
                    "status": "diverged", "steps_run": 20, "best_step": None,
                    "metrics": {"train": None, "val": None, "test": None},
                    "history": {"step": [], "loss": [], "ce": [], "penalty": {}},
                })
        mean_val = [sum(r["metrics"]["val"]["wga"] for r in c) / len(c) for c in by_config]
        best = max(range(len(by_config)), key=lambda i: (mean_val[i], -i))
        sel = by_config[best]
        sel_hp = {k: v for k, v in sel[0]["hparams"].items() if k != "seed"}
        selected[method] = sel_hp
        selected_rows[method] = sel
        summary_methods[method] = {
            "selected": {"hparams": sel_hp, "run_ids": [r["run_id"] for r in sel]},
            "metrics": {s: mean_metrics([r["metrics"][s] for r in sel]) for s in ("val", "test")},
            "seeds": {s: SplitSeeds.of([r["metrics"][s] for r in sel]).to_json() for s in ("val", "test")},
            "head": f"heads/{method}.safetensors",
            "n_configs": len(configs) + len((diverged or {}).get(method, [])),
            "n_diverged": len((diverged or {}).get(method, [])) * len(seeds),
        }
    summary = {
        "provenance": {"features": {"dataset": "waterbirds", "encoder": "fake-encoder"},
                       "probe_version": "0.1.0", "selection": "val_wga", "device": "cpu"},
        "group_names": GROUPS, "class_names": ["landbird", "waterbird"],
        "methods": summary_methods,
    }
    (path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (path / "summary.json").write_text(json.dumps(summary, indent=2))
    return {"selected": selected, "rows": selected_rows, "summary": summary}


def two_runs(tmp_path: Path) -> dict[str, Any]:
    """run_a: cma (2 seeds, one diverged configuration); run_b: erm (3 seeds).

    Returns the folders as "a" and "b" and what :func:`write_run_folder` returned as "fa", "fb".
    """
    a = write_run_folder(tmp_path / "run_a", {"cma": CMA_GRID}, seeds=(0, 1),
                         diverged={"cma": [{"alpha": 1e4, "beta": 1.0, "anneal": 100}]})
    b = write_run_folder(tmp_path / "run_b", {"erm": ERM_GRID}, seeds=(0, 1, 2))
    return {"a": tmp_path / "run_a", "b": tmp_path / "run_b", "fa": a, "fb": b}


def edit_summary(run: Path, edit: Any) -> None:
    """Rewrite run/summary.json after ``edit(summary)`` changed it in place."""
    path = run / "summary.json"
    summary = json.loads(path.read_text())
    edit(summary)
    path.write_text(json.dumps(summary))


def unselect(run: Path, method: str) -> None:
    """Make ``method`` a method with nothing selected (every configuration diverged)."""
    def edit(summary: dict[str, Any]) -> None:
        entry = summary["methods"][method]
        entry["selected"] = None
        del entry["seeds"], entry["metrics"]

    edit_summary(run, edit)


def expected(rows: list[dict[str, Any]], split: str, key: str) -> tuple[float, float]:
    """Mean and sample std over seeds of one metric of result rows."""
    vals = [r["metrics"][split][key] for r in rows]
    return statistics.fmean(vals), statistics.stdev(vals)


def pct(mean: float, std: float) -> str:
    """How the human formats show a mean ± std fraction."""
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def broken(tmp_path: Path, runs: dict[str, Any], what: str) -> tuple[Path, str]:
    """A run folder damaged as ``what`` says, and a fragment its error must contain."""
    run = runs["a"]
    if what == "missing_dir":
        return tmp_path / "nope", "nope"
    if what == "file":
        return run / "summary.json", "not a folder"
    if what == "no_summary":
        (run / "summary.json").unlink()
        return run, "summary.json is missing"
    if what == "no_results":
        (run / "results.jsonl").unlink()
        return run, "results.jsonl is missing"
    if what == "bad_summary":
        (run / "summary.json").write_text('{"methods": {')
        return run, "summary.json is not valid JSON"
    if what == "bad_results":
        lines = (run / "results.jsonl").read_text().splitlines()
        lines[1] = lines[1][:40]
        (run / "results.jsonl").write_text("\n".join(lines) + "\n")
        return run, "results.jsonl line 2 is not valid JSON"
    if what == "no_methods":
        (run / "summary.json").write_text('{"provenance": {}}')
        return run, "summary.json has no 'methods'"
    if what == "row_without_hparams":
        (run / "results.jsonl").write_text('{"method": "cma"}\n')
        return run, "results.jsonl line 1 has no 'hparams'"
    raise AssertionError(what)
