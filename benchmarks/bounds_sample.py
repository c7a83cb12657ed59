"""How many training rows the bound terms need: a sample's figures against every row's.

    python -m benchmarks.bounds_sample          # about two minutes on 2 cores

A head's bound terms (``probe.diagnostics.bounds``: the largest pairwise distance across training
domains of the per-domain gradient, Hessian and third derivative) cost ``O(m² d)`` on m
rows, so ``--bounds-rows`` caps m with a stratified sample. For an ERM optimum on each
task this measures the three maxima on every training row (exact) and on samples of
1,024 to 8,192 rows drawn as probe draws them (five sample seeds each): the relative
deviation from the exact figure (mean and worst over seeds) and the time per head, side
by side in one process. Tasks: synthetic Waterbirds-size embeddings (4,795 training
rows, d = 512) with 2 and 10 classes (``benchmarks.erm_vs_sklearn.embeddings``); the
demo's 898 training rows are below every cap.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import torch

from benchmarks._common import write_results
from benchmarks.erm_vs_sklearn import WATERBIRDS, embeddings
from features.store import SPLITS, FeatureSet
from probe.api import fit_grid
from probe.diagnostics.bounds import TERMS, measure, sample_rows
from probe.preprocessing import Preprocessor

CAPS = (1024, 2048, 4096, 8192)
SAMPLE_SEEDS = range(5)


def _maxima(theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor, dom: torch.Tensor) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    (fig,) = measure(theta.unsqueeze(0), X, y, dom, [])
    return np.array([fig[t] for t in TERMS]), time.perf_counter() - t0


def run_task(name: str, fs: FeatureSet) -> list[dict[str, Any]]:
    (row,) = fit_grid(fs, ["erm"], {"preprocess": ["standardize"]}, None, device="cpu", bounds_rows=0)["rows"]["erm"]
    train = np.flatnonzero(fs.split == SPLITS["train"])
    X = Preprocessor("standardize", state=dict(row.pre)).transform(torch.as_tensor(fs.features[train]))
    y, dom = torch.as_tensor(fs.y[train]), torch.as_tensor(fs.group[train])
    theta = row.theta.double()
    exact, exact_s = _maxima(theta, X, y, dom)
    rows = [{"task": name, "train_rows": len(train), "d": X.shape[1], "classes": fs.num_classes,
             "rows": len(train), "sample": "all (exact)", **dict(zip(TERMS, exact.tolist(), strict=True)),
             "s_per_head": exact_s}]
    for cap in CAPS:
        if cap >= len(train):
            continue
        devs, secs = [], []
        for seed in SAMPLE_SEEDS:
            idx = torch.as_tensor(sample_rows(fs.group[train], cap, seed))
            vals, sec = _maxima(theta, X[idx], y[idx], dom[idx])
            devs.append(np.abs(vals / exact - 1))
            secs.append(sec)
        dev = np.array(devs)
        rows.append({"task": name, "train_rows": len(train), "d": X.shape[1], "classes": fs.num_classes,
                     "rows": cap, "sample": f"{len(SAMPLE_SEEDS)} seeds",
                     **{f"{t}_dev_mean": float(dev[:, k].mean()) for k, t in enumerate(TERMS)},
                     **{f"{t}_dev_max": float(dev[:, k].max()) for k, t in enumerate(TERMS)},
                     "s_per_head": float(np.median(secs)), "speedup": exact_s / float(np.median(secs))})
        print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)
    tasks: list[tuple[str, Any]] = [(f"waterbirds-size, {c} classes", lambda c=c: embeddings(WATERBIRDS, 512, c))
                                    for c in (2, 10)]
    rows = [r for name, make in tasks for r in run_task(name, make())]
    dev_cols = [f"{t}_dev_{k}" for t in TERMS for k in ("mean", "max")]
    write_results("bounds_sample", rows,
                  ["task", "train_rows", "d", "classes", "rows", "sample", *TERMS, *dev_cols, "s_per_head",
                   "speedup"],
                  extra={"command": "python -m benchmarks.bounds_sample", "domains": "group",
                         "deviation": "|sample maximum / exact maximum - 1|, over the sample seeds"},
                  title="Bound terms of an ERM head: stratified row samples against every training row")


if __name__ == "__main__":
    main()
