"""What a comparison looks like at equal selection budgets (issue 27), on the offline tasks and on
planted-spurious synthetic data.

For each task, ERM, group-balanced ERM (reweight) and CMA, each at its configuration
selected by validation WGA, three ways:

* ``default``: the bare command, `probe fit FILE` (erm and reweight solved to their optimum:
  one candidate head each; CMA's 18 configurations × 20 checkpoints);
* ``same loop``: `--solver adam`, every method trained by the same stochastic loop and
  kept at its best checkpoint (erm and reweight: one configuration × 20 checkpoints);
* ``equal budgets``: `--solver adam --search random:18`, every method 18 configurations
  drawn from its declared distributions × 20 checkpoints (DomainBed's protocol).

Seeds 0-2 (each method's selection averages them; intervals resample them too).

    python -m benchmarks.budgets                 # every task (about 20 minutes on 2 cores)

Results: benchmarks/results/budgets.{json,md}.
"""

from __future__ import annotations

import json
import time
from typing import Any

from benchmarks._common import RESULTS_DIR, write_results
from benchmarks.defaults import CACHE
from benchmarks.label_free import each_task, task_args

METHODS = ("erm", "reweight", "cma")
WAYS = {"default": {}, "same loop": {"solver": "adam"}, "equal budgets": {"solver": "adam", "search": "random:18"}}


def compare(task: str, fs: Any, way: str, seeds: list[int]) -> list[dict[str, Any]]:
    from probe.api import fit_grid

    t0 = time.perf_counter()
    run = fit_grid(fs, list(METHODS), {"seed": seeds}, CACHE / "run_budgets", overwrite=True, **WAYS[way])
    wall = time.perf_counter() - t0
    rows = []
    for m in METHODS:
        entry = run["summary"].methods[m]
        test = entry.metrics.get("test") or {}
        ci = (test.get("ci95") or {}).get("wga") or [None, None]
        vs = entry.vs_reference or {}
        budget = entry.budget or {}
        rows.append({"task": task, "way": way, "method": m, "budget": f"{budget.get('configs')}×{budget.get('checkpoints')}",
                     "candidates": budget.get("candidates"), "test_wga": test.get("wga"), "ci_lo": ci[0],
                     "ci_hi": ci[1], "diff_vs_erm": vs.get("diff"), "diff_lo": (vs.get("ci95") or [None])[0],
                     "diff_hi": (vs.get("ci95") or [None, None])[1],
                     "codes": " ".join(d["code"] for d in entry.diagnostics or []), "wall_s": wall})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    args, seeds = task_args(argv, __doc__, "0,1,2", "budgets")
    rows: list[dict[str, Any]] = []
    for task, fs in each_task(args.tasks):
        for way in WAYS:
            rows += compare(task, fs, way, seeds)
    write_results(args.name, rows, ["task", "way", "method", "budget", "candidates", "test_wga", "ci_lo", "ci_hi",
                                    "diff_vs_erm", "diff_lo", "diff_hi", "codes", "wall_s"],
                  title="ERM, group-balanced ERM and CMA at the default, the same loop and equal budgets")
    print(f"wrote {RESULTS_DIR / args.name}.json and .md")


if __name__ == "__main__":
    main()
