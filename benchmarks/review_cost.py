"""What the reviewer's figures cost (issue 27): intervals, budgets, diagnostics and every rule's
choice, against the fit they describe, on a 3,480-head run of the CMA paper's protocol.

The protocol at Waterbirds size (``benchmarks.paper_grid.synthetic``: 4,795 training rows,
768-d, PCA to 100; all five rows, five seeds) is fitted for ``--steps`` steps, its anneal
steps scaled by steps/3,000 so that every one of its 3,480 heads is there; then, timed
apart on the rows it returned: the selection with every rule's choice
(``summarize_method``), the budgets and diagnostics (``annotate`` without the data), and the
intervals (``annotate`` with it: 2,000 resamples per method, paired to the reference). The
cost of the review does not grow with the steps (the history has ``steps / 20``
evaluations whatever the steps), so its share of this short fit is an upper bound on its
share of the whole protocol's fit (3,000 steps), which is also given against the whole
run that benchmarks.paper_grid measured (results/paper_grid_waterbirds_full.json).

The protocol keeps each head's last step, where every rule keeps the same head; with best
checkpoints kept (the default), the trainer also keeps every other rule's checkpoints
(probe.fitting.rule_checkpoints). Their cost is timed inside a fit of CMA's default grid,
five seeds, on the same features.

    python -m benchmarks.review_cost              # about 6 minutes on 2 cores

Results: benchmarks/results/review_cost.{json,md}.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from benchmarks._common import RESULTS_DIR, write_results
from benchmarks.paper_grid import synthetic

FULL_RUN = RESULTS_DIR / "paper_grid_waterbirds_full.json"


def _measured_full_run() -> float | None:
    """The whole Waterbirds protocol's wall time as benchmarks.paper_grid measured it (None if not run)."""
    import json

    try:
        rows = json.loads(FULL_RUN.read_text())["rows"]
    except (OSError, ValueError, KeyError):
        return None
    return next((r["measured_s"] for r in rows if r.get("side", "").startswith("probe") and not r.get("extrapolated")),
                None)


def _rule_checkpoints_cost(fs: Any, steps: int) -> tuple[float, float]:
    """Seconds the trainer spends keeping every other rule's checkpoints (and scoring them),
    within a fit of CMA's default grid on the same features with best checkpoints kept (the
    protocol keeps the last step's head, where every rule keeps the same one), and that
    fit's seconds."""
    from probe.api import fit_grid
    from probe.fitting import loop, rule_checkpoints

    spent = [0.0]

    def timing(fn: Any) -> Any:
        def wrapped(*a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[0] += time.perf_counter() - t
        return wrapped

    kept = loop.ChunkFit._other_rules, rule_checkpoints.RuleCheckpoints.records
    loop.ChunkFit._other_rules = timing(kept[0])  # type: ignore[method-assign]
    rule_checkpoints.RuleCheckpoints.records = timing(kept[1])  # type: ignore[method-assign]
    try:
        t0 = time.perf_counter()
        fit_grid(fs, ["cma"], {"seed": [0, 1, 2, 3, 4]}, None, steps=steps, domain="a", device="cpu")
        return spent[0], time.perf_counter() - t0
    finally:
        loop.ChunkFit._other_rules, rule_checkpoints.RuleCheckpoints.records = kept  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> None:
    from probe.api import fit_grid
    from probe.methods.protocols import resolve as resolve_protocol
    from probe.runs.folder import summarize_method
    from probe.runs.review import annotate

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--name", default="review_cost")
    args = parser.parse_args(argv)
    fs = synthetic("waterbirds")
    # The protocol's anneal steps scaled to the shorter run, so that it keeps all 3,480 heads
    # (at --steps 300 its own list would keep only the anneal steps below 300: 900 heads).
    full = resolve_protocol("cma-paper", "waterbirds", int((fs.split == 0).sum()), 2)
    scale = args.steps / full.settings["steps"]
    annealed = [m for m, g in full.grids.items() if len(g.get("anneal", [])) > 1]
    anneal = sorted({int(a * scale) for a in full.grids[annealed[0]]["anneal"]})
    t0 = time.perf_counter()
    rows_by_method = {}
    for methods, grid in (([m for m in full.grids if m not in annealed], {}), (annealed, {"anneal": anneal})):
        run = fit_grid(fs, methods, grid, None, protocol="cma-paper", steps=args.steps, device="cpu")
        rows_by_method.update(run["rows"])
    fit_s = time.perf_counter() - t0
    heads = sum(len(r) for r in rows_by_method.values())
    settings = {"select": "val_wga", "ties": "sem", "select_checkpoint": "last"}

    def timed(fn: Any) -> tuple[Any, float]:
        t = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t

    summaries, select_s = timed(lambda: {m: summarize_method(r, "val_wga", "sem") for m, r in rows_by_method.items()})
    _, checks_s = timed(lambda: annotate(summaries, rows_by_method, settings))
    from probe.domains import resolve

    fit_set = resolve(fs, "a")
    _, intervals_s = timed(lambda: annotate(summaries, rows_by_method, settings, fit_set))
    intervals_s -= checks_s  # annotate with the data does the checks again, then the intervals
    review_s = select_s + checks_s + intervals_s
    full_fit_s = _measured_full_run()
    tracked_s, default_fit_s = _rule_checkpoints_cost(fs, args.steps)
    rows = [{"heads": heads, "steps": args.steps, "fit_s": fit_s, "selection_and_rules_s": select_s,
             "budgets_and_diagnostics_s": checks_s, "intervals_s": intervals_s, "review_s": review_s,
             "review_share_of_this_fit": review_s / fit_s, "full_protocol_fit_s": full_fit_s,
             "review_share_of_full_fit": review_s / full_fit_s if full_fit_s else None,
             "default_cma_fit_s": default_fit_s, "rule_checkpoints_s": tracked_s,
             "rule_checkpoints_share": tracked_s / default_fit_s}]
    print(rows[0], flush=True)
    write_results(args.name, rows, list(rows[0]), title="The review's cost on a 3,480-head protocol run")
    print(f"wrote {RESULTS_DIR / args.name}.json and .md")


if __name__ == "__main__":
    main()
