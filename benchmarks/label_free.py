"""Without group labels (issue 28): every method under each information regime it allows, on the
offline tasks and on planted-spurious synthetic data, five seeds, test WGA with its 95% interval.

Regimes (``--group-labels``) and the domains each fit uses:

* ``all``: group labels everywhere; penalised methods on the true groups (``--domain group``);
* ``val``: group labels on validation only (DFR's setting); domains inferred (infer:errors);
* ``none``: no group label read (test labels only to report); domains inferred: infer:errors
  for every method that uses domains, and CMA also on infer:eiil and infer:cluster.

Every fit selects by the regime's default rule (validation WGA where validation groups are
read, worst-class validation accuracy otherwise), with each method's default grid, seeds
0-4. The label-free heads (afr, jtt, cb-llr) read no group label in any regime; DFR needs
validation groups, so it runs under ``all`` and ``val``.

    python -m benchmarks.label_free                      # every task (about half an hour on 2 cores)
    python -m benchmarks.label_free --tasks planted --seeds 0,1   # a quick look

Results: benchmarks/results/label_free.{json,md}. Feature files are cached under
benchmarks/.cache/ (as benchmarks.defaults extracts them).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from benchmarks import tasks
from benchmarks._common import RESULTS_DIR, write_results
from benchmarks.defaults import CACHE, features
from features.store import FeatureSet

#: (regime, domain source, methods fitted together)
PLAN = (
    ("all", "group", ("erm", "reweight", "cma", "afr", "jtt", "cb-llr", "dfr")),
    ("val", "infer:errors", ("erm", "reweight", "cma", "afr", "jtt", "cb-llr", "dfr")),
    ("none", "infer:errors", ("erm", "reweight", "cma", "afr", "jtt", "cb-llr")),
    ("none", "infer:eiil", ("cma",)),
    ("none", "infer:cluster", ("cma",)),
)


def planted(seed: int = 0, n: tuple[int, int, int] = (2000, 600, 600), d: int = 64) -> FeatureSet:
    """Gaussian features: a weak core direction (the class) and a stronger spurious one (the
    attribute), agreeing with the class in 95% of train and 50% of val and test: the
    Waterbirds recipe on synthetic embeddings."""
    rng = np.random.default_rng(seed)
    parts = []
    for split, (m, p) in enumerate(zip(n, (0.95, 0.5, 0.5), strict=True)):
        y = rng.integers(0, 2, m)
        a = np.where(rng.random(m) < p, y, 1 - y)
        X = rng.standard_normal((m, d))
        X[:, 0] += 1.0 * (2 * y - 1)
        X[:, 1] += 2.5 * (2 * a - 1)
        parts.append((X, y, a, np.full(m, split)))
    X, y, a, s = (np.concatenate(v) for v in zip(*parts, strict=True))
    return FeatureSet(X.astype(np.float32), y.astype(np.int64), a.astype(np.int64), (2 * y + a).astype(np.int64),
                      s.astype(np.int8), np.arange(len(y)).astype(str).astype(object), ["c0", "c1"],
                      ["c0/a0", "c0/a1", "c1/a0", "c1/a1"], attrs={"dataset": "planted"}, path="<planted>")


def fit_regime(task: str, fs: Any, regime: str, source: str, methods: tuple[str, ...],
               seeds: list[int]) -> list[dict[str, Any]]:
    from probe.api import fit_grid

    t0 = time.perf_counter()
    run = fit_grid(fs, list(methods), {"seed": seeds}, CACHE / "run_label_free", overwrite=True,
                   group_labels=regime, domain=source, reference="erm" if "erm" in methods else None)
    wall = time.perf_counter() - t0
    summary = run["summary"]
    rows = []
    for m in methods:
        entry = summary.methods[m]
        test = entry.metrics.get("test") or {}
        ci = (test.get("ci95") or {}).get("wga") or [None, None]
        vs = entry.vs_reference or {}
        rows.append({"task": task, "regime": regime, "domain": source if m not in ("erm", "afr", "jtt", "cb-llr",
                                                                                   "dfr") else "–",
                     "method": m, "seeds": len(seeds), "test_wga": test.get("wga"), "ci_lo": ci[0], "ci_hi": ci[1],
                     "test_acc": test.get("acc"), "diff_vs_erm": vs.get("diff"),
                     "diff_lo": (vs.get("ci95") or [None])[0], "diff_hi": (vs.get("ci95") or [None, None])[1],
                     "selection": summary.selection, "ari_train": (summary.domains or {}).get("ari_train"),
                     "selected": entry.selected.hparams if entry.selected else None, "wall_s": wall})
        print(json.dumps(rows[-1], default=str), flush=True)
    return rows


def task_args(argv: list[str] | None, doc: str, seeds: str, name: str) -> tuple[argparse.Namespace, list[int]]:
    """The command line of a benchmark over the offline tasks and planted data (this one and
    benchmarks.budgets): ``--tasks``, ``--seeds``, ``--name``."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--tasks", default=",".join(["planted", *tasks.TASKS]))
    parser.add_argument("--seeds", default=seeds)
    parser.add_argument("--name", default=name)
    args = parser.parse_args(argv)
    return args, [int(s) for s in args.seeds.split(",")]


def each_task(names: str) -> Iterator[tuple[str, Any]]:
    """(task, its features) for the comma list ``names``: planted data built here, the
    offline tasks extracted once into benchmarks/.cache."""
    CACHE.mkdir(exist_ok=True)
    for task in names.split(","):
        yield task, planted() if task == "planted" else features(task, quick=False)


def main(argv: list[str] | None = None) -> None:
    args, seeds = task_args(argv, __doc__, "0,1,2,3,4", "label_free")
    rows: list[dict[str, Any]] = []
    for task, fs in each_task(args.tasks):
        for regime, source, methods in PLAN:
            rows += fit_regime(task, fs, regime, source, methods, seeds)
    write_results(args.name, rows, ["task", "regime", "domain", "method", "test_wga", "ci_lo", "ci_hi",
                                    "diff_vs_erm", "diff_lo", "diff_hi", "test_acc", "selection", "ari_train",
                                    "wall_s"],
                  title="Without group labels: test WGA (95% interval) of every method under each regime")
    print(f"wrote {RESULTS_DIR / args.name}.json and .md")


if __name__ == "__main__":
    main()
