"""Grid fitting speed and memory (issue 4), on synthetic features at real scales.

(a) The CMA authors' Waterbirds grid: α ∈ {1e1..1e5} × β ∈ {1..1e4} × anneal ∈
    {0, 1000, 2000} × 5 seeds = 375 runs, 3,000 steps, batch 500, 4,795 train
    rows, d = 768: wall time of one batched `fit_method` call.
(b) Batched vs sequential: the same configurations fitted as one grid and one
    after another by the same trainer, side by side; throughput ratio.
(c) CelebA scale (162,770 train rows, d = 512): a 16-configuration CMA grid,
    peak RSS above the pre-feature baseline, in units of the feature matrix.

    python -m benchmarks.grid            # full size (about 10-20 minutes on 2 cores)
    python -m benchmarks.grid --quick    # fewer steps, extrapolated and labelled so
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np
import torch

from benchmarks._common import RESULTS_DIR, PeakRSS, write_results
from features.store import FeatureSet
from probe.fitting.dispatch import fit_method
from probe.train.settings import Settings

WATERBIRDS = {0: [3498, 184, 56, 1057], 1: [467, 466, 133, 133], 2: [2255, 2255, 642, 642]}
CELEBA = {0: [71629, 66874, 22880, 1387], 1: [8535, 8276, 2874, 182], 2: [9767, 7535, 2480, 180]}


def synthetic(sizes: dict[int, list[int]], dim: int, seed: int = 0) -> FeatureSet:
    rng = np.random.default_rng(seed)
    split = np.concatenate([np.full(sum(s), k) for k, s in sizes.items()]).astype(np.int8)
    group = np.concatenate([np.repeat(np.arange(4), s) for s in sizes.values()]).astype(np.int64)
    y, a = group // 2, group % 2
    X = rng.standard_normal((len(y), dim), dtype=np.float32)
    X[:, 0] += y
    X[:, 1] += 2 * a  # the spurious direction is the easier one, as in Waterbirds
    return FeatureSet(X, y, a, group, split, np.arange(len(y)).astype(str).astype(object), ["c0", "c1"],
                      ["c0/a0", "c0/a1", "c1/a0", "c1/a1"])


def authors_grid(seeds: int = 5) -> list[dict]:
    return [{"alpha": a, "beta": b, "anneal": an, "seed": s, "lr": 1e-3, "weight_decay": 0.0,
             "preprocess": "standardize"}
            for s in range(seeds) for a in (1e1, 1e2, 1e3, 1e4, 1e5) for b in (1, 10, 100, 1e3, 1e4)
            for an in (0, 1000, 2000)]


def run_waterbirds(steps: int, full_steps: int) -> dict:
    fs = synthetic(WATERBIRDS, 768)
    cfgs = authors_grid()
    st = Settings(steps=steps, batch_size=500, eval_every=100)
    t0 = time.perf_counter()
    rows = fit_method(fs, "cma", cfgs, st)
    wall = time.perf_counter() - t0
    est = wall * full_steps / steps
    return {"case": "waterbirds authors' grid", "configs": len(cfgs), "steps": steps, "wall_s": wall,
            "full_grid_s": est, "extrapolated": steps != full_steps, "target_s": 600, "met": est < 600,
            "diverged": sum(r.status == "diverged" for r in rows)}


def run_throughput(n_configs: int, steps: int) -> dict:
    fs = synthetic(WATERBIRDS, 768)
    cfgs = authors_grid(seeds=1)[:n_configs]
    st = Settings(steps=steps, batch_size=500, eval_every=50)
    t0 = time.perf_counter()
    fit_method(fs, "cma", cfgs, st)
    batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    for c in cfgs:
        fit_method(fs, "cma", [c], st)
    sequential = time.perf_counter() - t0
    return {"case": "batched vs sequential", "configs": n_configs, "steps": steps, "batched_s": batched,
            "sequential_s": sequential, "ratio": sequential / batched, "target": ">= 20x",
            "met": sequential / batched >= 20}


def _celeba_child(steps: int) -> None:
    # Warm up on a tiny problem first so that loading torch's kernels (code, not
    # data) is part of the baseline rather than counted against the grid.
    tiny = synthetic({0: [40, 40, 40, 40], 1: [10] * 4, 2: [10] * 4}, 512)
    fit_method(tiny, "cma", [{"alpha": 1.0, "beta": 1.0, "anneal": 0, "seed": 0, "lr": 1e-3, "weight_decay": 0.0,
                              "preprocess": "standardize"}], Settings(steps=3, batch_size=64, eval_every=3))
    with PeakRSS() as mem:  # the feature matrix, as a user's loaded file, is part of the peak
        fs = synthetic(CELEBA, 512)
        feat_bytes = fs.features.nbytes
        cfgs = [{"alpha": a, "beta": b, "anneal": 0, "seed": 0, "lr": 1e-3, "weight_decay": 0.0,
                 "preprocess": "standardize"} for a in (1e1, 1e2, 1e3, 1e4) for b in (1, 10, 100, 1e3)]
        t0 = time.perf_counter()
        fit_method(fs, "cma", cfgs, Settings(steps=steps, batch_size=500, eval_every=max(steps // 4, 1)))
        wall = time.perf_counter() - t0
    print(json.dumps({"peak_above_baseline_MB": mem.bytes / 2**20, "features_MB": feat_bytes / 2**20,
                      "wall_s": wall, "memory": mem.note}))


def run_celeba(steps: int) -> dict:
    out = subprocess.run([sys.executable, "-m", "benchmarks.grid", "--celeba-child", str(steps)],
                         capture_output=True, text=True, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    ratio = r["peak_above_baseline_MB"] / r["features_MB"]
    return {"case": "celeba 16-config grid memory", "configs": 16, "steps": steps, "wall_s": r["wall_s"],
            "features_MB": r["features_MB"], "peak_MB": r["peak_above_baseline_MB"], "ratio": ratio,
            "target": "< 2x features", "met": ratio < 2}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="300 steps for (a), extrapolated to 3,000")
    ap.add_argument("--parts", default="throughput,celeba,waterbirds",
                    help="which measurements to (re)run; rows of the other parts are kept from results/grid.json")
    ap.add_argument("--celeba-child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.celeba_child is not None:
        _celeba_child(args.celeba_child)
        return
    torch.manual_seed(0)
    parts = args.parts.split(",")
    runners = {
        # One seed of the authors' grid is one cohort: the unit the trainer batches.
        "throughput": lambda: run_throughput(75, 40 if args.quick else 100),
        "celeba": lambda: run_celeba(200 if args.quick else 1000),
        "waterbirds": lambda: run_waterbirds(300 if args.quick else 3000, 3000),
    }
    previous = {}
    old = RESULTS_DIR / "grid.json"
    if old.exists():
        previous = {r["part"]: r for r in json.loads(old.read_text())["rows"] if "part" in r}
    rows = []
    for part, run in runners.items():
        if part in parts:
            rows.append({"part": part, "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **run()})
        elif part in previous:
            rows.append(previous[part])
    for r in rows:
        print(json.dumps(r))
    write_results("grid", rows, ["case", "measured", "configs", "steps", "wall_s", "full_grid_s", "batched_s", "sequential_s",
                                 "ratio", "peak_MB", "features_MB", "target", "met"],
                  extra={"command": "python -m benchmarks.grid" + (" --quick" if args.quick else "")
                           + ("" if args.parts == ap.get_default("parts") else f" --parts {args.parts}")},
                  title="Grid fitting: batched CMA grids (synthetic features at Waterbirds and CelebA scale)")


if __name__ == "__main__":
    main()
