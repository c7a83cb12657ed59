"""Which defaults make `probe fit FILE --method erm,cma` work on any encoder (issue 12).

For each task of ``benchmarks.tasks`` (real offline data, two encoders of different
widths, images and text): every preprocessing (standardize, pca with the default
dimension rule, l2) × penalty scaling (unit, the default, and none, the former one)
× method (erm, cma with its default grid), over three seeds, selected on validation
worst-group accuracy as `probe fit` does. Then the bare default command on each task,
checked against the bar: no selected configuration collapsed, at most a third of CMA's
grid collapsed, CMA's test worst-group accuracy at least ERM's.

    python -m benchmarks.defaults            # everything (tens of minutes on 2 cores)
    python -m benchmarks.defaults --quick    # one task, one seed, 100 steps (a smoke run)

Results: benchmarks/results/defaults.{json,md}. Features are cached under
benchmarks/.cache/ (not committed); rerunning reuses them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import tasks
from benchmarks._common import RESULTS_DIR, write_results

CACHE = Path(__file__).resolve().parent / ".cache"
PREPROCESSINGS = ("standardize", "pca", "l2")
SCALINGS = ("unit", "none")
SEEDS = (0, 1, 2)


def features(task: str, quick: bool) -> Path:
    """The task's feature file, extracted with the real CLI once (resumable)."""
    out = CACHE / f"{task}.h5"
    if not out.exists():
        args = tasks.TASKS[task](CACHE)
        cmd = [sys.executable, "-m", "cli", "extract", *args, "--out", str(out), "--quiet"]
        subprocess.run(cmd, check=True)
    return out


def summarize(run: dict[str, Any], method: str) -> dict[str, Any]:
    entry = run["summary"].methods[method]
    rows = run["rows"][method]
    metrics = entry.metrics or {}
    chosen = entry.selected
    return {
        "val_wga": (metrics.get("val") or {}).get("wga"), "test_wga": (metrics.get("test") or {}).get("wga"),
        "test_acc": (metrics.get("test") or {}).get("acc"),
        "selected": chosen.hparams if chosen else None,
        "selected_status": sorted({r.status for r in rows if chosen and r.run_id in chosen.run_ids}),
        "configs": entry.count("n_configs"), "collapsed": entry.count("n_collapsed"),
        "choice": " ".join(f"{k}={v:g}" for k, v in (chosen.hparams if chosen else {}).items()
                           if k in ("alpha", "beta", "anneal")),
    }


def study(task: str, h5: Path, quick: bool, preprocessings: tuple[str, ...] = PREPROCESSINGS,
          scalings: tuple[str, ...] = SCALINGS, seeds: tuple[int, ...] = SEEDS,
          cma_grid: dict[str, list[float]] | None = None) -> list[dict[str, Any]]:
    from probe.api import fit_grid

    rows = []
    seeds = seeds[:1] if quick else seeds
    for pre in preprocessings:
        for scaling in scalings:
            t0 = time.perf_counter()
            run = fit_grid(h5, ["erm", "cma"], {"preprocess": [pre], "seed": list(seeds), **(cma_grid or {})},
                           CACHE / "run",
                           overwrite=True, normalize=scaling, **({"steps": 100} if quick else {}))
            wall = time.perf_counter() - t0
            for method in ("erm", "cma"):
                rows.append({"part": "study", "task": task, "preprocess": pre, "normalize": scaling,
                             "method": method, "seeds": list(seeds), "wall_s": wall, **summarize(run, method)})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def default_command(task: str, h5: Path, quick: bool, seed: int = 0, preprocess: str | None = None
                    ) -> dict[str, Any]:
    """`probe fit FILE --method erm,cma` with no other flag (``--seed`` for seeds other than
    the default 0: how much one seed moves the bar; ``--preprocess`` to put another default
    to the same bar), and the issue's bar."""
    out = CACHE / f"run_default_{task}"
    flags = [*(["--steps", "100"] if quick else []), *(["--seed", str(seed)] if seed else []),
             *(["--preprocess", preprocess] if preprocess else [])]
    cmd = [sys.executable, "-m", "cli", "fit", str(h5), "--method", "erm,cma", "--out", str(out), "--overwrite",
           "--quiet", *flags]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t0
    summary = json.loads((out / "summary.json").read_text())
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    status = {r["run_id"]: r["status"] for r in results}
    erm, cma = (summary["methods"][m] for m in ("erm", "cma"))
    selected_collapsed = any(status[i] == "collapsed" for m in (erm, cma) for i in m["selected"]["run_ids"])
    cma_wga, erm_wga = cma["metrics"]["test"]["wga"], erm["metrics"]["test"]["wga"]
    row = {"part": "default command", "task": task, "command": " ".join(["probe fit FILE --method erm,cma", *flags]),
           "seed": seed, "preprocess": preprocess or "(default)",
           "wall_s": wall, "erm_test_wga": erm_wga, "cma_test_wga": cma_wga,
           "erm_test_acc": erm["metrics"]["test"]["acc"], "cma_test_acc": cma["metrics"]["test"]["acc"],
           "cma_selected": cma["selected"]["hparams"], "cma_collapsed": cma["n_collapsed"],
           "cma_configs": cma["n_configs"], "selected_collapsed": selected_collapsed}
    row["met"] = (not selected_collapsed and cma["n_collapsed"] <= cma["n_configs"] / 3 and cma_wga >= erm_wga)
    print(json.dumps(row), flush=True)
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one task, one seed, 100 steps")
    parser.add_argument("--tasks", default=",".join(tasks.TASKS))
    parser.add_argument("--preprocess", default=",".join(PREPROCESSINGS), help="the study's preprocessings")
    parser.add_argument("--scalings", default=",".join(SCALINGS), help="the study's --normalize values")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="the study's seeds")
    parser.add_argument("--alpha", default=None, help="the study's CMA alpha values (default: its default grid)")
    parser.add_argument("--beta", default=None, help="the study's CMA beta values (default: its default grid)")
    parser.add_argument("--parts", default="study,default", help="study, default (the bare command), or both")
    parser.add_argument("--command-seeds", default="0", help="seeds of the bare command (0: no --seed flag)")
    parser.add_argument("--command-preprocess", default=None,
                        help="give the bare command this --preprocess (default: none, the product's default)")
    parser.add_argument("--name", default=None, help="results file name (default: defaults or defaults_quick)")
    args = parser.parse_args(argv)
    names = ["demo"] if args.quick else [t for t in args.tasks.split(",") if t]
    parts = set(args.parts.split(","))
    CACHE.mkdir(exist_ok=True)
    rows: list[dict[str, Any]] = []
    for task in names:
        h5 = features(task, args.quick)
        if "study" in parts:
            rows += study(task, h5, args.quick, tuple(args.preprocess.split(",")), tuple(args.scalings.split(",")),
                          tuple(int(s) for s in args.seeds.split(",")),
                          {k: [float(v) for v in getattr(args, k).split(",")] for k in ("alpha", "beta")
                           if getattr(args, k)})
        if "default" in parts:
            rows += [default_command(task, h5, args.quick, int(seed), args.command_preprocess)
                     for seed in args.command_seeds.split(",")]
    name = args.name or ("defaults_quick" if args.quick else "defaults")
    write_results(name, rows, ["part", "task", "seed", "preprocess", "normalize", "method", "val_wga", "test_wga",
                               "test_acc", "collapsed", "configs", "choice", "erm_test_wga", "cma_test_wga",
                               "cma_collapsed", "cma_configs", "met", "wall_s"])
    print(f"wrote {RESULTS_DIR / name}.json and .md")


if __name__ == "__main__":
    main()
