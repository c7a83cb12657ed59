"""ERM heads vs scikit-learn's LogisticRegression(solver="lbfgs") at the same L2 strength (issue 16).

    python -m benchmarks.erm_vs_sklearn            # all four cases (about 10-20 minutes on 2 cores)
    python -m benchmarks.erm_vs_sklearn --quick    # 1/10 of the rows, a smoke test; writes nothing
    python -m benchmarks.erm_vs_sklearn --cases "waterbirds-size, 2" --runs 5 --name erm_vs_sklearn_wb2
                                                   # one case, five times over: how much of a margin is the load?
    python -m benchmarks.erm_vs_sklearn --isotropic-only   # only the estimator on isotropic data (a minute)

Cases: 4,795 training rows × 512 (Waterbirds' size) and 162,770 × 768 (CelebA's), two
classes and ten, on synthetic embeddings (:func:`embeddings`), plus the demo features
when ``demo_out/demo.h5`` exists (``make demo``). Both sides get the same thread count
(torch's threads and threadpoolctl's limit for sklearn's BLAS) in one process: one by
default, since on a shared machine a second BLAS thread that has to wait for a busy
core slows both libraries several-fold and makes the comparison a measure of the load.
Small cases take the best of five runs on each side (a fraction of a second each, and
the load of the machine moves single runs by half); the load average is recorded before
and after.

* sklearn: ``LogisticRegression(C, tol)`` fitted on the standardized training rows
  (standardizing is not timed), C = 1/(λ N_train), 2/(λ N_train) for two classes;
  the same tol as probe's (the same stopping rule: max|∇| ≤ tol of the same
  mean-normalised objective), and also sklearn's default tol = 1e-4.
* probe: ``fit_grid(features, ["erm"], ...)`` end to end (``preprocess="standardize"``, as
  sklearn is given, not the default pca; the solver,
  scoring train/val/test), one head at λ; then a 4 weight decays × 4 seeds grid (the
  seeds do not change a full-batch optimum, so it is 4 problems, solved together),
  and, to show what 16 distinct optima cost, 16 weight decays.

The isotropic cases (written to ``erm_vs_sklearn_isotropic``) time the estimator a user
calls, ``LinearHead("erm", preprocess="none")``, against ``LogisticRegression`` on raw,
well-conditioned features (4,795 × 512 and 60,000 × 768, two classes, a logistic model of
N(0, I) rows; held-out test rows for the accuracy), where L-BFGS needs few iterations and
any fixed cost of the estimator (preprocessing, scoring, bound terms) shows.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import numpy as np
import torch

from benchmarks._common import write_results
from features.store import SPLITS, FeatureSet, read_features
from probe.api import fit_grid

WATERBIRDS = (4795, 1199, 5794)
CELEBA = (162770, 19867, 19962)
LAMBDA = 1e-4  # probe's default weight decay
GRID_LAMBDAS = (1e-5, 1e-4, 1e-3, 1e-2)
TOL = 1e-5  # probe's default tol


def embeddings(sizes: tuple[int, int, int], d: int, classes: int, seed: int = 0) -> FeatureSet:
    """Embedding-like features: 64 latent factors with a decaying spectrum, mixed into d
    correlated columns, plus isotropic noise. The class depends on the factors (and noise);
    a binary spurious attribute agrees with the class (with its parity, for ten classes)
    in 90% of train and half of val/test, and shifts the features along its own direction."""
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    k = 64
    F = rng.standard_normal((n, k), dtype=np.float32) / np.sqrt(np.arange(1, k + 1, dtype=np.float32))
    mix = rng.standard_normal((k, d), dtype=np.float32)
    split = np.repeat(np.arange(3), sizes).astype(np.int8)
    score = F @ rng.standard_normal((k, classes), dtype=np.float32) * 2
    y = (score + rng.gumbel(size=(n, classes)).astype(np.float32)).argmax(1).astype(np.int64)
    agree = np.where(split == 0, 0.9, 0.5)
    a = np.where(rng.random(n) < agree, y % 2, 1 - y % 2).astype(np.int64)
    X = F @ mix
    X += 0.5 * rng.standard_normal((n, d), dtype=np.float32)
    X += np.outer(2 * a - 1, rng.standard_normal(d, dtype=np.float32) / np.sqrt(d) * 3).astype(np.float32)
    names = [f"c{c}" for c in range(classes)]
    return FeatureSet(X, y, a, 2 * y + a, split, np.arange(n).astype(str).astype(object), names,
                      [f"{c}/a{v}" for c in names for v in (0, 1)], path=f"<synthetic {sizes[0]}x{d}>")


def isotropic(n_train: int, d: int, seed: int = 1) -> tuple[np.ndarray, ...]:
    """Train and held-out test rows of N(0, I) features with labels from a logistic model
    (a unit-variance margin scaled by 2): the easiest case for L-BFGS."""
    rng = np.random.default_rng(seed)
    n_test = max(1000, n_train // 4)
    X = rng.standard_normal((n_train + n_test, d), dtype=np.float32)
    w = rng.standard_normal(d).astype(np.float32) * 2 / np.sqrt(d)
    y = (rng.random(len(X)) < 1 / (1 + np.exp(-(X @ w)))).astype(np.int64)
    return X[:n_train], y[:n_train], X[n_train:], y[n_train:]


def run_isotropic(n_train: int, d: int, repeat: int = 5) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression

    from probe.estimator import LinearHead

    X, y, X_test, y_test = isotropic(n_train, d)
    domains = np.zeros(len(y), dtype=np.int64)
    C = 2.0 / (LAMBDA * n_train)
    times: dict[str, list[float]] = {"sklearn": [], "probe": []}
    for _ in range(repeat):  # interleaved, so the machine's load falls on both sides alike
        t0 = time.perf_counter()
        sk = LogisticRegression(C=C, tol=TOL, max_iter=10_000).fit(X, y)
        times["sklearn"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        head = LinearHead("erm", preprocess="none", weight_decay=LAMBDA, tol=TOL, device="cpu").fit(X, y, domains)
        times["probe"].append(time.perf_counter() - t0)
    sk_acc, probe_acc = float((sk.predict(X_test) == y_test).mean()), float((head.predict(X_test) == y_test).mean())
    sk_s, probe_s = min(times["sklearn"]), min(times["probe"])
    return {"case": f"isotropic {n_train}x{d}, 2 classes", "n_train": n_train, "d": d,
            "sklearn_s": sk_s, "sklearn_iter": int(np.max(sk.n_iter_)), "probe_s": probe_s,
            "probe_iter": head.result_.steps_run, "ratio": probe_s / sk_s,
            "sklearn_test_acc": sk_acc, "probe_test_acc": probe_acc, "diff_points": 100 * abs(sk_acc - probe_acc),
            "met": bool(probe_s <= sk_s and 100 * abs(sk_acc - probe_acc) <= 0.1)}


def sklearn_fit(Z: np.ndarray, fs: FeatureSet, lam: float, tol: float, repeat: int = 1) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression

    tr, te = fs.split == SPLITS["train"], fs.split == SPLITS["test"]
    C = (2.0 if fs.num_classes == 2 else 1.0) / (lam * tr.sum())
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        sk = LogisticRegression(C=C, tol=tol, max_iter=10_000).fit(Z[tr], fs.y[tr])
        best = min(best, time.perf_counter() - t0)
    return {"s": best, "acc": float((sk.predict(Z[te]) == fs.y[te]).mean()), "iter": int(np.max(sk.n_iter_))}


def probe_fit(fs: FeatureSet, grid: dict[str, list], repeat: int = 1) -> tuple[float, list]:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        rows = fit_grid(fs, ["erm"], {"lr": [1e-2], "preprocess": ["standardize"], **grid}, None, tol=TOL,
                        device="cpu")["rows"]["erm"]
        best = min(best, time.perf_counter() - t0)
    return best, rows


def run_case(name: str, fs: FeatureSet) -> dict[str, Any]:
    tr = fs.split == SPLITS["train"]
    # probe's standardization: training mean and sample std
    Z = ((fs.features - fs.features[tr].mean(0)) / fs.features[tr].std(0, ddof=1).clip(1e-6)).astype(np.float32)
    rep = 5 if tr.sum() < 20_000 else 1
    sk = sklearn_fit(Z, fs, LAMBDA, TOL, rep)
    sk_default = sklearn_fit(Z, fs, LAMBDA, 1e-4, rep)
    del Z
    one_s, (one,) = probe_fit(fs, {"weight_decay": [LAMBDA]}, rep)
    grid_s, grid = probe_fit(fs, {"weight_decay": list(GRID_LAMBDAS), "seed": [0, 1, 2, 3]}, rep)
    distinct_s, distinct = probe_fit(fs, {"weight_decay": list(np.geomspace(1e-5, 1e-2, 16))}, rep)
    acc = one.metrics["test"]["acc"]
    diff = 100 * abs(acc - sk["acc"])
    return {
        "case": name, "n_train": int(tr.sum()), "d": fs.features.shape[1], "classes": fs.num_classes,
        "sklearn_s": sk["s"], "sklearn_iter": sk["iter"], "probe_s": one_s, "probe_iter": one.steps_run,
        "probe_status": one.status, "sklearn_acc": sk["acc"], "probe_acc": acc, "diff_points": diff,
        "grid16_s": grid_s, "grid16_ratio": grid_s / one_s, "distinct16_s": distinct_s,
        "distinct16_ratio": distinct_s / one_s,
        "grid_status": sorted({r.status for r in grid + distinct}),
        "sklearn_tol1e-4_s": sk_default["s"], "sklearn_tol1e-4_iter": sk_default["iter"],
        "sklearn_tol1e-4_acc": sk_default["acc"],
        "met": bool(one_s <= sk["s"] and diff <= 0.1 and grid_s <= 3 * one_s),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1/10 of the rows; nothing is written")
    ap.add_argument("--threads", type=int, default=1, help="threads for both sides (module docstring)")
    ap.add_argument("--cases", default="", help="only the cases whose name contains this text")
    ap.add_argument("--runs", type=int, default=1, help="measure each case this many times, one row each")
    ap.add_argument("--name", default="erm_vs_sklearn", help="results file name under benchmarks/results/")
    ap.add_argument("--isotropic-only", action="store_true", help="only the estimator's isotropic cases")
    args = ap.parse_args()
    from threadpoolctl import threadpool_limits

    load = os.getloadavg()  # other work on the machine skews both sides' times

    torch.set_num_threads(args.threads)
    shrink = 10 if args.quick else 1
    cases = [(f"waterbirds-size, {c} classes", lambda c=c: embeddings(tuple(s // shrink for s in WATERBIRDS), 512, c))
             for c in (2, 10)]
    cases += [(f"celeba-size, {c} classes", lambda c=c: embeddings(tuple(s // shrink for s in CELEBA), 768, c))
              for c in (2, 10)]
    if os.path.exists("demo_out/demo.h5"):
        cases.insert(0, ("demo features (demo_out/demo.h5)", lambda: read_features("demo_out/demo.h5")))
    rows, iso = [], []
    with threadpool_limits(args.threads):
        probe_fit(embeddings((200, 50, 50), 16, 2), {})  # warm-up: torch's kernels load once, not per case
        for n, d in ((4795 // shrink, 512), (60_000 // shrink, 768)):
            iso.append(run_isotropic(n, d))
            print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in iso[-1].items()}, flush=True)
        for name, make in ([] if args.isotropic_only else cases):
            if args.cases not in name:
                continue
            fs = make()
            for _ in range(args.runs):
                rows.append(run_case(name, fs))
                print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in rows[-1].items()}, flush=True)
    if args.quick:
        return
    write_results("erm_vs_sklearn_isotropic", iso,
                  ["case", "sklearn_s", "sklearn_iter", "probe_s", "probe_iter", "ratio", "sklearn_test_acc",
                   "probe_test_acc", "diff_points", "met"],
                  extra={"command": "python -m benchmarks.erm_vs_sklearn --isotropic-only", "threads": args.threads,
                         "weight_decay": LAMBDA, "tol": TOL, "repeats": "best of 5, interleaved",
                         "probe": 'LinearHead("erm", preprocess="none", weight_decay=1e-4, tol=1e-5)',
                         "sklearn": "LogisticRegression(C=2/(weight_decay N), tol=1e-5)",
                         "targets": "probe_s <= sklearn_s, diff_points <= 0.1",
                         "load": "1/5/15-min load average {:.2f}/{:.2f}/{:.2f} at start".format(*load)},
                  title="The estimator's ERM head vs scikit-learn on isotropic data (raw features)")
    if args.isotropic_only:
        return
    command = "python -m benchmarks.erm_vs_sklearn" + "".join(
        f" --{k} {v!r}" if isinstance(v, str) else f" --{k} {v}" for k, v in
        (("cases", args.cases), ("runs", args.runs), ("name", args.name))
        if v != ap.get_default(k))
    write_results(args.name, rows,
                  ["case", "n_train", "d", "classes", "sklearn_s", "sklearn_iter", "probe_s", "probe_iter",
                   "sklearn_acc", "probe_acc", "diff_points", "grid16_s", "grid16_ratio", "distinct16_s",
                   "distinct16_ratio", "sklearn_tol1e-4_s", "met"],
                  extra={"command": command, "threads": args.threads,
                         "weight_decay": LAMBDA, "tol": TOL, "grid": "weight_decay 1e-5,1e-4,1e-3,1e-2 x seed 0..3",
                         "targets": "probe_s <= sklearn_s, diff_points <= 0.1, grid16_s <= 3 x probe_s",
                         "load_average_1_5_15min_at_start": list(load),
                         "load_average_1_5_15min_at_end": list(os.getloadavg()),
                         "load": "1/5/15-min load average {:.2f}/{:.2f}/{:.2f} at start, {:.2f}/{:.2f}/{:.2f} at end"
                                 .format(*load, *os.getloadavg())},
                  title="ERM heads (full-batch L-BFGS) vs scikit-learn LogisticRegression(lbfgs), same L2 strength")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
