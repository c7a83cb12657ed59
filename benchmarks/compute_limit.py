"""The floating-point work of a protocol's training steps, and the time it would take at the
machine's measured matmul rate: the compute limit a batched run is compared with (issue 29).

Work: the protocol's chunks for one seed (every method's heads, as `probe fit` plans them)
are stepped under ``torch.utils.flop_counter.FlopCounterMode``, which counts the
multiply-adds of the matrix products (mm, bmm, addmm, einsum's contractions, forward and
backward); elementwise work is not counted, so the limit is a lower bound. A step's work
depends on how many heads have their penalty on (annealing), so steps are counted at
``SAMPLES`` step numbers spread over the run, as the loop takes them (no logging) and
averaged. That, times the seeds and the protocol's steps, is the run's training work
(evaluation and the fixed costs are not counted).

Rate: the best of several runs of a large square fp32 matmul (the peak a dense kernel
reaches here), and of the step's own most frequent matmul shape (skinny products reach
less of it), at the thread count of the run.

    python -m benchmarks.compute_limit --scale celeba    # a minute or two
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from benchmarks._common import write_results
from benchmarks.paper_grid import synthetic


def plans_for(scale: str, steps: int | None = None) -> tuple[Any, dict[str, Any]]:
    """The cma-paper protocol's fit set and per-method plans for ``scale`` (as fit_grid plans them)."""
    from probe.methods.protocols import resolve_for
    from probe.pipeline import plan_fit

    fs = synthetic(scale)
    settings: dict[str, Any] = {"bounds": False, **({"steps": steps} if steps else {})}
    resolved = resolve_for("cma-paper", fs, settings)
    return plan_fit(fs, list(resolved.methods), {}, settings, "cpu", "float32", resolved)


SAMPLES = 8


def step_flops(scale: str, samples: int = SAMPLES) -> dict[str, Any]:
    """Matmul FLOPs of an average training step of every chunk of one seed, per method, and
    the protocol's seeds and steps."""
    from torch.utils.flop_counter import FlopCounterMode

    from probe.fitting.loop import ChunkFit
    from probe.methods import get_method
    from probe.train.data import SplitCache

    fs, plans = plans_for(scale)
    cache = SplitCache()
    per_method = {}
    seeds = set()
    for m, p in plans.items():
        seeds |= {c.seed for c in p.chunks}
        first = min(c.seed for c in p.chunks)
        total = 0
        for chunk in (c for c in p.chunks if c.seed == first):
            cls = get_method(m)
            configs = [p.configs[i] for i in chunk.configs]
            if cls.penalized():  # the heads in the order fit_chunks trains them
                configs = [configs[j] for j in cls.penalty_order(configs)]
            fit = ChunkFit(fs, cls, configs, chunk, p.settings, cache.get(fs, chunk.preprocess, p.settings, chunk.seed))
            fit.step(0)  # the first batch, out of the count
            steps = p.settings.steps
            with FlopCounterMode(display=False) as counter:
                for k in range(samples):
                    fit.step(int((k + 0.5) * steps / samples), log=False)
            total += counter.get_total_flops() / samples
        per_method[m] = total
    steps = next(iter(plans.values())).settings.steps
    return {"per_method_per_seed": per_method, "seeds": len(seeds), "steps": steps,
            "per_step": sum(per_method.values()) * len(seeds)}


def matmul_rate(n: int = 2048, repeat: int = 5) -> float:
    """FLOP/s of the best of ``repeat`` (n×n)·(n×n) fp32 products."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def skinny_rate(rows: int = 500, inner: int = 100, cols: int = 640, repeat: int = 50) -> float:
    """FLOP/s of the step's typical product: a batch (rows × inner) times a grid of heads
    (inner × heads·classes)."""
    a, b = torch.randn(rows, inner), torch.randn(inner, cols)
    a @ b
    t = time.perf_counter()
    for _ in range(repeat):
        a @ b
    return 2 * rows * inner * cols * repeat / (time.perf_counter() - t)


def limit(scale: str) -> dict[str, Any]:
    """The training work and its time at the measured rates (seconds)."""
    work = step_flops(scale)
    peak, skinny = matmul_rate(), skinny_rate()
    total = work["per_step"] * work["steps"]
    return {"scale": scale, "threads": torch.get_num_threads(), "flops_per_step": work["per_step"],
            "flops_per_step_per_seed": work["per_method_per_seed"], "seeds": work["seeds"], "steps": work["steps"],
            "training_flops": total, "matmul_gflops": peak / 1e9, "skinny_gflops": skinny / 1e9,
            "limit_s_at_peak": total / peak, "limit_s_at_skinny": total / skinny}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", default="celeba")
    parser.add_argument("--name", default=None)
    args = parser.parse_args(argv)
    row = limit(args.scale)
    print(row, flush=True)
    write_results(args.name or f"compute_limit_{args.scale}", [row],
                  ["scale", "threads", "flops_per_step", "seeds", "steps", "training_flops", "matmul_gflops",
                   "skinny_gflops", "limit_s_at_peak", "limit_s_at_skinny"],
                  title=f"The compute limit of the cma-paper protocol at {args.scale} size")


if __name__ == "__main__":
    main()
