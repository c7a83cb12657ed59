"""Beyond the paper: the exact third-order term R₃ next to the Hessian term R_H, and whether
aligning third derivatives helps worst-group accuracy on planted-spurious data.

    python -m benchmarks.higher_order            # both parts (a few minutes on 2 cores)
    python -m benchmarks.higher_order --quick    # smaller shapes and study, a smoke run

(a) Cost, the shapes of benchmarks/penalties.py (N = 512 rows, K = 4 domains, d = 768,
    C = 2 and 65 classes, one head and a grid of 64), float32: the value and backward of
    ``hessian_variance`` and of ``third_order_variance`` (each computes its own Gram
    matrix), measured side by side in one process, repeats interleaved so that load from
    other processes hits both alike; best wall time; peak memory of one call above the
    memory before it (CPU: peak RSS after resetting it; CUDA: max_memory_allocated).

(b) Study: Waterbirds-sized synthetic features (4,795 / 1,199 / 5,794 rows, d = 32, a weak
    core direction and a strong spurious one agreeing with y on 95% of training rows,
    50% elsewhere), two plantings of the spurious attribute: "gaussian" (a mean shift)
    and "skewed" (a mean shift plus a sign flip of a skewed, unit-variance coordinate,
    so the groups also differ in their third moments). For each of several seeds (data
    and training), CMA is fitted on an α × β × anneal grid with γ = 0 ("α/β") and on the
    same grid crossed with γ ("α/β/γ", a superset); each arm is selected as `probe fit`
    selects (the configuration with the best validation worst-group accuracy, mean over
    seeds), and its test worst-group accuracy reported (mean ± std over seeds), with the
    bound terms of the selected heads. Grid: ``STUDY_GRID`` (48 configurations, 12 with
    γ = 0), 600 Adam steps of 512 domain-balanced rows, evaluated every 50. Penalties use ``normalize="unit"`` so the three
    weights are on one scale.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from base.device import resolve_device  # noqa: E402
from benchmarks._common import PeakRSS, write_results  # noqa: E402
from features.extract import trim_heap  # noqa: E402
from features.store import FeatureSet  # noqa: E402
from probe import moments  # noqa: E402

COST_COLUMNS = ["shape", "G", "term", "time_ms", "peak_mem_MB", "ratio_to_hessian", "value"]
STUDY_COLUMNS = ["scenario", "arm", "configs", "selected", "val_wga", "test_wga", "test_acc", "third_bound",
                 "hess_bound"]
SIZES = {0: [3498, 184, 56, 1057], 1: [467, 466, 133, 133], 2: [2255, 2255, 642, 642]}  # Waterbirds


# ------------------------------------------------------------------------------ (a) cost


def _problem(N: int, d: int, C: int, K: int, G: int, device: torch.device):
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(N, d, generator=gen).to(device)
    dom = torch.randint(0, K, (N,), generator=gen).to(device)
    shape = (C, d + 1) if G == 1 else (G, C, d + 1)
    theta = (torch.randn(shape, generator=gen) * 0.05).to(device).requires_grad_(True)
    return theta, X, dom


def _peak(call, device: torch.device) -> float:
    """Bytes one call needs above what is allocated before it."""
    gc.collect()
    trim_heap()
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        call()
        torch.cuda.synchronize()
        return float(torch.cuda.max_memory_allocated() - base)
    with PeakRSS() as mem:
        call()
    return float(mem.bytes)


def _measure(theta: torch.Tensor, X: torch.Tensor, dom: torch.Tensor, device: torch.device, repeat: int
             ) -> dict[str, tuple[float, float, float]]:
    """term -> (best seconds, peak bytes, value) of value + backward, the terms interleaved."""
    terms = {"hessian": moments.hessian_variance, "third": moments.third_order_variance}
    values = {}

    def call(name: str) -> None:
        theta.grad = None
        v = terms[name](theta, X, dom).sum()
        v.backward()
        values[name] = float(v.detach())

    for name in terms:  # warm-up: one-time initialisation is not the term's cost
        call(name)
    peaks = {name: _peak(lambda n=name: call(n), device) for name in terms}
    best = dict.fromkeys(terms, float("inf"))
    for _ in range(repeat):
        for name in terms:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            call(name)
            if device.type == "cuda":
                torch.cuda.synchronize()
            best[name] = min(best[name], time.perf_counter() - t0)
    return {name: (best[name], peaks[name], values[name]) for name in terms}


def cost_rows(quick: bool, device: torch.device, repeat: int) -> list[dict[str, Any]]:
    N, K, d = (128, 4, 96) if quick else (512, 4, 768)
    rows = []
    for C in (2, 65):
        for G in (1, 8 if quick else 64):
            res = _measure(*_problem(N, d, C, K, G, device), device, repeat)
            for name, (sec, peak, value) in res.items():
                rows.append({"shape": f"N={N} K={K} d={d} C={C}", "G": G, "term": name, "time_ms": sec * 1e3,
                             "peak_mem_MB": peak / 2**20, "ratio_to_hessian": sec / res["hessian"][0],
                             "value": value})
                print(f"{rows[-1]['shape']:>26} G={G:<3} {name:<8} {sec * 1e3:9.2f} ms {peak / 2**20:8.1f} MB",
                      flush=True)
    return rows


# --------------------------------------------------------------------- (c) bounds' cost


def bounds_cost(quick: bool) -> dict[str, Any]:
    """What the bound terms add to a CelebA-sized fit (162,770 train rows, d = 768, two
    classes, four domains, 16 heads): at the kept checkpoint, a --bounds-rows sample of
    8,192 rows (the default until issue 16 lowered it to 2,048), float32 features, float64
    head; at each evaluation, the default --bounds-curve-rows sample (1,024 rows, Gram
    matrix computed once)."""
    from probe.diagnostics.bounds import Curve, measure, sample_rows

    d, G, n_train = (96, 4, 20_000) if quick else (768, 16, 162_770)
    gen = torch.Generator().manual_seed(0)
    dom_all = np.repeat(np.arange(4), [71629, 66874, 22880, 1387]) if not quick else np.arange(n_train) % 4
    out: dict[str, Any] = {"case": f"CelebA-sized bounds, d={d}, {G} heads, C=2", "train_rows": len(dom_all)}
    for name, cap in (("checkpoint", 8192), ("curve", 1024)):
        idx = sample_rows(dom_all, cap)
        X = torch.randn(len(idx), d, generator=gen)
        y = torch.randint(0, 2, (len(idx),), generator=gen)
        dom = torch.as_tensor(dom_all[idx])
        theta = torch.randn(G, 2, d + 1, generator=gen, dtype=torch.float64) * 0.05
        t0 = time.perf_counter()
        if name == "checkpoint":
            measure(theta, X, y, dom, ["g0", "g1", "g2", "g3"])
        else:
            curve = Curve(X, y, dom)
            t_gram = time.perf_counter() - t0
            t0 = time.perf_counter()
            curve.record(1, theta)
            out["curve_gram_once_s"] = t_gram
        out[f"{name}_rows"] = len(idx)
        out[f"{name}_s"] = time.perf_counter() - t0
    print(out, flush=True)
    return out


# ----------------------------------------------------------------------------- (b) study


def planted(scenario: str, seed: int, dim: int = 32) -> FeatureSet:
    """Waterbirds-sized groups (y, a); the spurious attribute a agrees with y on 95% of train."""
    rng = np.random.default_rng(seed)
    split = np.concatenate([np.full(sum(s), k) for k, s in SIZES.items()]).astype(np.int8)
    group = np.concatenate([np.repeat(np.arange(4), s) for s in SIZES.values()]).astype(np.int64)
    y, a = group // 2, group % 2
    X = rng.standard_normal((len(y), dim))
    X[:, 0] += 0.8 * (2 * y - 1)  # the core direction, weaker than the spurious one
    if scenario == "gaussian":
        X[:, 1] += 1.5 * (2 * a - 1)
    else:  # the spurious coordinate also flips the sign of a unit-variance skewed noise
        X[:, 1] = 1.0 * (2 * a - 1) + (2 * a - 1) * (rng.exponential(1.0, len(y)) - 1.0)
    return FeatureSet(X.astype(np.float32), y, a, group, split, np.arange(len(y)).astype(str).astype(object),
                      ["c0", "c1"], ["c0/a0", "c0/a1", "c1/a0", "c1/a1"])


#: under normalize="unit" on these features R_g ~ 1e-2, R_H ~ 1e-3 and R₃ ~ 5e-4 early in
#: training, so γ needs larger values than α to weigh as much
STUDY_GRID = {"alpha": (1e1, 1e2, 1e3), "beta": (1e1, 1e3), "anneal": (0, 200), "gamma": (0.0, 1e2, 1e3, 1e4)}
QUICK_GRID = {"alpha": (1e2,), "beta": (1e1, 1e3), "anneal": (0,), "gamma": (0.0, 1e3)}


def study_grid(quick: bool, seed: int) -> list[dict[str, Any]]:
    g = QUICK_GRID if quick else STUDY_GRID
    return [{"alpha": al, "beta": be, "gamma": ga, "anneal": an, "seed": seed, "lr": 1e-2, "weight_decay": 1e-4,
             "preprocess": "standardize"}
            for ga in g["gamma"] for al in g["alpha"] for be in g["beta"] for an in g["anneal"]]


def _selected(rows: list, gamma_allowed: bool) -> list:
    from probe.runs.selection import select

    return select([r for r in rows if gamma_allowed or r.hparams["gamma"] == 0], "val_wga") or []


def study_rows(quick: bool, device: torch.device, seeds: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from probe.fitting.dispatch import fit_method
    from probe.train.settings import Settings

    st = Settings(steps=200 if quick else 600, batch_size=512, eval_every=50, normalize="unit", device=device,
                  bounds_curve_rows=0)
    out, per_seed = [], {}
    for scenario in ("gaussian", "skewed"):
        rows = []
        t0 = time.perf_counter()
        for seed in range(seeds):
            rows += fit_method(planted(scenario, seed), "cma", study_grid(quick, seed), st)
        wall = time.perf_counter() - t0
        for arm, allowed in (("α/β (γ = 0)", False), ("α/β/γ", True)):
            sel = _selected(rows, allowed)
            hp = {k: v for k, v in sel[0].hparams.items() if k in ("alpha", "beta", "gamma", "anneal")}
            out.append({"scenario": scenario, "arm": arm,
                        "configs": len({r.config_key for r in rows if allowed or r.hparams["gamma"] == 0}),
                        "selected": ", ".join(f"{k}={v:g}" for k, v in hp.items()),
                        **{k: _mean_std([f(r) for r in sel]) for k, f in (
                            ("val_wga", lambda r: r.metrics["val"]["wga"]),
                            ("test_wga", lambda r: r.metrics["test"]["wga"]),
                            ("test_acc", lambda r: r.metrics["test"]["acc"]),
                            ("third_bound", lambda r: r.bounds["third"]),
                            ("hess_bound", lambda r: r.bounds["hess"]))},
                        "seeds": len(sel), "wall_s": wall})
            per_seed[f"{scenario} {arm}"] = [r.metrics["test"]["wga"] for r in sel]
            print(f"{scenario:>9} {arm:<12} {out[-1]['selected']:<40} test WGA {out[-1]['test_wga']}", flush=True)
    return out, per_seed


def _mean_std(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.4g}" if values else ""
    return f"{statistics.fmean(values):.4g} ± {statistics.stdev(values):.2g}"


# ---------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller shapes, grid, seeds and steps (a smoke run)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=None, help="study seeds (default 5; --quick 2)")
    args = ap.parse_args()
    device = resolve_device(args.device)
    seeds = args.seeds or (2 if args.quick else 5)
    t0 = time.perf_counter()
    costs = cost_rows(args.quick, device, args.repeat)
    bounds = bounds_cost(args.quick)
    study, per_seed = study_rows(args.quick, device, seeds)
    big = next(r for r in costs if r["term"] == "third" and r["G"] == 1 and r["shape"].endswith("C=65"))
    targets = {"C65 one head: third-order time <= 3x the Hessian's": big["ratio_to_hessian"] <= 3,
               "C65 one head: third-order peak memory < 1024 MB": big["peak_mem_MB"] < 1024}
    command = "python -m benchmarks.higher_order" + (" --quick" if args.quick else "")
    extra = {"command": command, "device": str(device), "repeat": args.repeat, "bounds_cost": bounds,
             "study": study,
             "study_test_wga_per_seed": per_seed, "targets": targets, "total_s": time.perf_counter() - t0,
             "memory": "CPU: peak RSS minus the RSS before the call, after resetting the peak; CUDA: "
                       "max_memory_allocated minus the allocation before the call"}
    _, mpath = write_results("higher_order", costs, COST_COLUMNS, extra=extra,
                             title="Third-order term R₃ next to the Hessian term R_H (value + backward), and a "
                                   "study of γ")
    with open(mpath, "a") as fh:
        fh.write(f"\n## Study: test worst-group accuracy, selected on validation ({seeds} seeds, mean ± std)\n\n")
        fh.write("| " + " | ".join(STUDY_COLUMNS) + " |\n|" + "---|" * len(STUDY_COLUMNS) + "\n")
        for r in study:
            fh.write("| " + " | ".join(str(r[c]) for c in STUDY_COLUMNS) + " |\n")
        fh.write("\n## What the bound terms cost at CelebA scale (CPU, float64 head, float32 features)\n\n")
        fh.write("| " + " | ".join(bounds) + " |\n|" + "---|" * len(bounds) + "\n")
        fh.write("| " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in bounds.values()) + " |\n")
        fh.write("\n## Targets (issue 13)\n\n| target | met |\n|---|---|\n")
        for k, v in targets.items():
            fh.write(f"| {k} | {'yes' if v else 'no'} |\n")
    for k, v in targets.items():
        print(f"  target {k}: {'met' if v else 'MISSED'}")
    print(f"wrote {mpath}")


if __name__ == "__main__":
    main()
