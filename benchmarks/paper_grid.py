"""The CMA paper's whole linear-probing protocol, timed (issue 11).

Our side: `--protocol cma-paper` (all five rows: ERM, Fishr, CORAL, HGP, CMA; their
grids; five seeds) fitted as probe fits it, on synthetic features of Waterbirds' size
(4,795 train rows, 768-d, PCA to 100) and of CelebA's (162,770 train rows). The
authors' side: their sequential loop (one configuration at a time, plain PyTorch: a
bias-free nn.Linear, plain SGD, the per-environment gradients and Hessians formed
directly as their code forms them, HGP's Hessian-gradient product by double
backward, CORAL on the frozen inputs) for a sample of configurations of each method,
on the same features, per step.

Both sides run fewer steps than the protocol (``--fraction``; ``--fraction 1`` runs
ours whole) and are extrapolated linearly to the full number of steps, configurations and seeds. Ours is run twice (s
and 2s steps) so that its fixed cost (preprocessing, bound terms, evaluation of the
final heads) is measured apart from its per-step cost and not multiplied by the
steps; every figure says whether it is measured or extrapolated. Same process, same
thread count.

    python -m benchmarks.paper_grid                 # both scales (about 15 minutes on 2 cores)
    python -m benchmarks.paper_grid --scale waterbirds --fraction 1 --name paper_grid_waterbirds_full
                                                    # the whole Waterbirds protocol, ours unextrapolated
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import grad

from benchmarks._common import write_results
from features.store import FeatureSet
from probe.api import fit_grid
from probe.methods.protocols import resolve

#: train / val / test rows and train group sizes (landbird-land, landbird-water, waterbird-land, waterbird-water)
SCALES = {"waterbirds": ((4795, 1199, 5794), (3498, 184, 56, 1057)),
          "celeba": ((162770, 19867, 19962), (71629, 66874, 22880, 1387))}
DIM = 768


def synthetic(scale: str, seed: int = 0, fraction: float = 1.0, dim: int = DIM) -> FeatureSet:
    """Gaussian features with a weak core and a strong spurious direction, train groups in
    the real dataset's proportions and balanced val/test groups.

    ``fraction`` < 1 keeps that share of every group (at least two rows each), for checks
    that need the same shape of task on fewer rows (``benchmarks.gpu_check --dry-run``)."""
    rng = np.random.default_rng(seed)
    (n_tr, n_va, n_te), train_groups = SCALES[scale]
    parts = []
    for split, n in enumerate((n_tr, n_va, n_te)):
        sizes = np.array(train_groups) if split == 0 else np.full(4, n // 4)
        if fraction < 1:
            sizes = np.maximum(2, np.round(sizes * fraction)).astype(int)
        group = np.repeat(np.arange(4), sizes)
        y, a = group // 2, group % 2
        X = rng.standard_normal((len(group), dim)).astype(np.float32)
        X[:, 0] += 1.0 * (2 * y - 1)
        X[:, 1] += 2.5 * (2 * a - 1)
        parts.append((X, y, a, group, np.full(len(group), split)))
    X, y, a, g, s = (np.concatenate(v) for v in zip(*parts, strict=True))
    return FeatureSet(X, y.astype(np.int64), a.astype(np.int64), g.astype(np.int64), s.astype(np.int8),
                      np.arange(len(y)).astype(str).astype(object), ["landbird", "waterbird"],
                      ["landbird/land", "landbird/water", "waterbird/land", "waterbird/water"],
                      attrs={"dataset": scale}, path=f"<synthetic {scale}>")


def ours(fs: FeatureSet, steps: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    res = fit_grid(fs, None, {}, None, protocol="cma-paper", steps=steps, device="cpu")
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "heads": sum(len(r) for r in res["rows"].values())}


# ------------------------------------------------------------------- the authors' loop


def _pen_cma(w: torch.Tensor, Xb, yb, eb, alpha: float, beta: float) -> torch.Tensor:
    """Their closed forms: per environment the gradient (P−Y)ᵀX/n and the Hessian summed
    from per-sample Kronecker products, each divided by d·C; the variances across envs."""
    C, d = w.shape
    Gs, Hs = [], []
    for e in torch.unique(eb):
        X, y = Xb[eb == e], yb[eb == e]
        p = torch.softmax(X @ w.T, -1)
        Gs.append(((p - F.one_hot(y, C)).T @ X / len(y)).reshape(-1) / (d * C))
        A = torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)  # (n, C, C)
        H = torch.einsum("nab,ni,nj->aibj", A, X, X) / len(y)  # (C, d, C, d)
        Hs.append(H.reshape(C * d, C * d) / (d * C))
    Gs, Hs = torch.stack(Gs), torch.stack(Hs)
    return alpha * ((Gs - Gs.mean(0)) ** 2).sum(1).mean() + beta * ((Hs - Hs.mean(0)) ** 2).sum((1, 2)).mean()


def _pen_hgp(w: torch.Tensor, Xb, yb, eb, alpha: float, beta: float) -> torch.Tensor:
    """Their Hessian-gradient product: the gradient of ‖g_e‖ times ‖g_e‖, by double backward."""
    Gs, HGs = [], []
    for e in torch.unique(eb):
        loss = F.cross_entropy(Xb[eb == e] @ w.T, yb[eb == e])
        (g,) = torch.autograd.grad(loss, w, create_graph=True)
        norm = g.norm()
        (dn,) = torch.autograd.grad(norm, w, create_graph=True)
        Gs.append(g.reshape(-1))
        HGs.append((norm * dn).reshape(-1))
    Gs, HGs = torch.stack(Gs), torch.stack(HGs)
    return alpha * ((Gs - Gs.mean(0)) ** 2).sum(1).mean() + beta * ((HGs - HGs.mean(0)) ** 2).sum(1).mean()


def _pen_fishr(w: torch.Tensor, Xb, yb, eb, lam: float, _: float) -> torch.Tensor:
    def sample_loss(w, x, y):
        return F.cross_entropy(x[None] @ w.T, y[None])

    V = torch.stack([torch.vmap(grad(sample_loss), in_dims=(None, 0, 0))(w, Xb[eb == e], yb[eb == e]).var(0)
                     for e in torch.unique(eb)])
    return lam * ((V - V.mean(0)) ** 2).sum((1, 2)).mean()


def _pen_coral(w: torch.Tensor, Xb, yb, eb, gamma: float, _: float) -> torch.Tensor:
    """On the frozen inputs: computed every step, with no gradient w.r.t. the head."""
    envs = [Xb[eb == e] for e in torch.unique(eb)]
    pen = sum((envs[0].mean(0) - x.mean(0)).pow(2).mean() + (torch.cov(envs[0].T) - torch.cov(x.T)).pow(2).mean()
              for x in envs[1:])
    return gamma * pen


PENALTIES = {"erm": None, "cma": _pen_cma, "hgp": _pen_hgp, "fishr": _pen_fishr, "coral": _pen_coral}


def authors_per_step(X: torch.Tensor, y: torch.Tensor, e: torch.Tensor, method: str, steps: int) -> float:
    """Seconds per step of their loop for one configuration (mean over ``steps``)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(X.shape[1], 2, bias=False)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    pen = PENALTIES[method]
    t0 = time.perf_counter()
    for _ in range(steps):
        idx = torch.as_tensor(rng.choice(len(y), 500, replace=False))
        Xb, yb, eb = X[idx], y[idx], e[idx]
        loss = torch.stack([F.cross_entropy(model(Xb[eb == v]), yb[eb == v]) for v in torch.unique(eb)]).mean()
        if pen is not None:
            loss = loss + pen(model.weight, Xb, yb, eb, 10.0, 10.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (time.perf_counter() - t0) / steps


def run_scale(scale: str, fraction: float, their_steps: int) -> list[dict[str, Any]]:
    fs = synthetic(scale)
    n_train = int((fs.split == 0).sum())
    full = resolve("cma-paper", scale, n_train, 2)
    n_full = full.settings["steps"]
    if fraction >= 1:  # the whole protocol, once: nothing of ours is extrapolated
        whole = ours(fs, n_full)
        ours_full = whole["wall_s"]
        # the same protocol's matmul work at this machine's measured matmul rate, same threads
        from benchmarks.compute_limit import limit

        bound = limit(scale)
        rows: list[dict[str, Any]] = [{
            "scale": scale, "side": "probe (batched)", "method": "all five rows", "heads": whole["heads"],
            "steps_measured": n_full, "steps_full": n_full, "measured_s": ours_full, "full_s": ours_full,
            "extrapolated": False, "training_tflop": bound["training_flops"] / 1e12,
            "compute_limit_s": bound["limit_s_at_skinny"], "compute_limit_peak_s": bound["limit_s_at_peak"],
            "ratio_to_limit": ours_full / bound["limit_s_at_skinny"], "compute_limit": bound}]
    else:
        # Two runs, s and 2s steps: the difference is the per-step cost, the rest is the fixed
        # cost (preprocessing, bound terms, reports), which must not be scaled with the steps.
        short = max(1, math.ceil(n_full * fraction))
        first, second = ours(fs, short), ours(fs, 2 * short)
        per_step = max(0.0, (second["wall_s"] - first["wall_s"]) / short)
        fixed = max(0.0, first["wall_s"] - per_step * short)
        ours_full = fixed + per_step * n_full
        rows = [{
            "scale": scale, "side": "probe (batched)", "method": "all five rows", "heads": first["heads"],
            "steps_measured": f"{short} and {2 * short}", "steps_full": n_full,
            "measured_s": f"{first['wall_s']:.1f} and {second['wall_s']:.1f}", "per_step_ms": 1e3 * per_step,
            "fixed_s": fixed, "full_s": ours_full, "extrapolated": 2 * short < n_full}]
    print(rows[0], flush=True)
    # Their loop on the same features after the same preprocessing (PCA 100 + ISR-Mean).
    from probe.preprocessing import Preprocessor

    tr = torch.as_tensor(np.flatnonzero(fs.split == 0))
    X = torch.as_tensor(fs.features)[tr]
    y, a = torch.as_tensor(fs.y)[tr], torch.as_tensor(fs.a)[tr]
    Z = Preprocessor("pca+isr-mean", pca_dim=100, isr_class=0, isr_dims=1).fit(X, y, a).transform(X)
    total = 0.0
    for method, grid in full.grids.items():
        configs = math.prod(len(v) for k, v in grid.items())
        per_step = authors_per_step(Z, y, a, method, their_steps)
        t = per_step * n_full * configs
        total += t
        rows.append({"scale": scale, "side": "authors' loop (sequential)", "method": method, "heads": configs,
                     "steps_measured": their_steps, "steps_full": n_full,
                     "measured_s": per_step * their_steps, "per_step_ms": 1e3 * per_step, "full_s": t,
                     "extrapolated": True})
        print(rows[-1], flush=True)
    rows.append({"scale": scale, "side": "authors' loop (sequential)", "method": "all five rows",
                 "heads": sum(r["heads"] for r in rows[1:]), "steps_full": n_full,
                 "full_s": total, "extrapolated": True, "speedup": total / ours_full})
    print(rows[0], rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=[*SCALES, "both"], default="both")
    parser.add_argument("--fraction", type=float, default=None,
                        help="share of the protocol's steps in the shorter of probe's two runs "
                             "(default 0.05 Waterbirds, 0.005 CelebA); 1: the whole protocol, once")
    parser.add_argument("--name", default="paper_grid", help="results file name")
    parser.add_argument("--their-steps", type=int, default=20, help="steps of their loop timed per method")
    args = parser.parse_args(argv)
    rows = []
    for scale in (SCALES if args.scale == "both" else [args.scale]):
        fraction = args.fraction or (0.05 if scale == "waterbirds" else 0.005)
        rows += run_scale(scale, fraction, args.their_steps)
    write_results(args.name, rows, ["scale", "side", "method", "heads", "steps_measured", "steps_full",
                                       "measured_s", "per_step_ms", "fixed_s", "full_s", "extrapolated",
                                       "speedup", "compute_limit_s", "ratio_to_limit"],
                  extra={"command": " ".join(["python -m benchmarks.paper_grid",
                                              *(sys.argv[1:] if argv is None else argv)]),
                         "note": "the authors' side is their training loop only (no evaluation); ours is "
                                 "fit_grid end to end (preprocessing, evaluation, bound terms, scoring). "
                                 "compute_limit_s (whole runs only): the protocol's training matmul work "
                                 "(benchmarks.compute_limit: FlopCounterMode, elementwise work not counted) "
                                 "at the measured rate of the step's typical product; ratio_to_limit = "
                                 "full_s / compute_limit_s"},
                  title="The CMA paper's protocol: probe's batched grid vs the authors' sequential loop")


if __name__ == "__main__":
    main()
