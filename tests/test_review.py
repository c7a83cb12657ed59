"""Issue 27: numbers a reviewer can trust. The bootstrap intervals' coverage on a classifier
whose group accuracies are known, every diagnostic code triggered and not, confidently
wrong heads marked, and the contract of summary.json."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from base.errors import UserError
from probe.api import fit_grid
from probe.domains import resolve
from probe.records.results import Result
from probe.runs.checks import CODES, budget, budget_checks, method_checks
from probe.runs.intervals import bootstrap
from probe.train.data import SplitCache
from probe.train.scoring import score_heads
from probe.train.settings import Settings
from tests.test_trainer import waterbirds_like

SIZES, ACCURACY = np.array([400, 120, 300]), np.array([0.92, 0.70, 0.95])  # the true WGA is 0.70


def _draw(rng: np.random.Generator, accuracy: np.ndarray) -> np.ndarray:
    return np.concatenate([rng.random(n) < p for n, p in zip(SIZES, accuracy, strict=True)])


@pytest.mark.slow
def test_bootstrap_intervals_cover_the_true_wga_and_difference_about_95_percent_of_the_time() -> None:
    groups = np.repeat(np.arange(len(SIZES)), SIZES)
    better = ACCURACY + np.array([0.0, 0.1, 0.0])  # a method 10 points better on the worst group
    rng = np.random.default_rng(0)
    draws, covered, covered_diff = 200, 0, 0
    for i in range(draws):
        out = bootstrap({"base": _draw(rng, ACCURACY)[None], "new": _draw(rng, better)[None]}, groups,
                        reference="base", resamples=500, seed=i)
        lo, hi = out["base"]["ci95"]["wga"]
        covered += lo <= ACCURACY.min() <= hi
        dlo, dhi = out["new"]["vs_reference"]["ci95"]
        covered_diff += dlo <= better.min() - ACCURACY.min() <= dhi
    assert 0.90 <= covered / draws <= 0.99, covered / draws
    assert 0.90 <= covered_diff / draws <= 0.995, covered_diff / draws


def test_seeds_widen_the_interval_and_the_point_is_the_mean_over_seeds() -> None:
    groups = np.repeat([0, 1], [200, 200])
    rng = np.random.default_rng(3)
    seeds = np.stack([np.concatenate([rng.random(200) < 0.9, rng.random(200) < p]) for p in (0.5, 0.8)])
    one = bootstrap({"m": seeds[:1]}, groups, resamples=1000)["m"]["ci95"]["wga"]
    both = bootstrap({"m": seeds}, groups, resamples=1000)["m"]["ci95"]["wga"]
    assert both[1] - both[0] > 1.5 * (one[1] - one[0])  # the seeds disagree by 30 points


def _row(run_id: str, hp: dict, best: int, steps: list[int], ce: list[float], pen: dict, val_n: int = 50,
         status: str = "ok", classes: tuple[int, int] = (500, 500)) -> Result:
    metrics = {"train": {"per_class": {"a": {"acc": 1.0, "n": classes[0]}, "b": {"acc": 1.0, "n": classes[1]}}},
               "val": {"wga": 0.5, "acc": 0.6, "per_group": {"g0": {"acc": 0.5, "n": val_n}, "g1": {"acc": 0.7, "n": 60}}},
               "test": {"wga": 0.5, "acc": 0.6}}
    history = {"step": steps, "ce": ce, "loss": ce, "penalty": pen, "val_wga": [0.5] * len(steps),
               "val_acc": [0.6] * len(steps)}
    return Result("cma", {"optimizer": "adam", "steps": steps[-1], **hp}, metrics, status, run_id, steps[-1], best,
                  history)


STEPS = [50, 100, 150, 200]


def _codes(rows, selected, ties=1, penalties=None, **settings) -> set[str]:
    found = method_checks(rows, selected, {"select_checkpoint": "best", **settings},
                          {"grad": "alpha"} if penalties is None else penalties, ties)
    assert {d["code"] for d in found} <= set(CODES) and all(d["message"] for d in found)
    return {d["code"] for d in found}


def test_every_code_is_triggered_when_it_holds_and_not_otherwise() -> None:
    ce, pen = [0.5, 0.4, 0.3, 0.2], {"grad": [1e-1, 1e-1, 1e-1, 1e-1]}
    grid = [_row(f"cma-{i:04d}", {"alpha": a, "anneal": 0}, 100, STEPS, ce, pen) for i, a in enumerate((1.0, 2.0, 4.0))]
    assert _codes(grid, ["cma-0001"]) == set()  # a middle value, a middle checkpoint, ratios 0.2-0.5
    first = [_row("cma-0000", {"alpha": 2.0, "anneal": 0}, 50, STEPS, ce, pen)]
    assert "first_checkpoint" in _codes(first, ["cma-0000"])
    annealed = [_row("cma-0000", {"alpha": 2.0, "anneal": 100}, 150, STEPS, ce, pen)]  # 150: its first eligible
    assert "first_checkpoint" in _codes(annealed, ["cma-0000"])
    assert "last_checkpoint" in _codes([_row("cma-0000", {"alpha": 2.0}, 200, STEPS, ce, pen)], ["cma-0000"])
    assert "grid_edge" in _codes(grid, ["cma-0002"]) and "grid_edge" not in _codes(grid[:2], ["cma-0001"])
    assert "val_ties" in _codes(grid, ["cma-0001"], ties=3)
    assert "small_val_group" in _codes([_row("cma-0000", {"alpha": 2.0}, 100, STEPS, ce, pen, val_n=12)],
                                       ["cma-0000"])
    inert = [_row("cma-0000", {"alpha": 1e-3, "anneal": 0}, 100, STEPS, ce, pen)]  # 1e-4 / 0.4: far below 1%
    assert "penalty_inert" in _codes(inert, ["cma-0000"]) and "penalty_inert" not in _codes(grid, ["cma-0001"])
    dominant = [_row("cma-0000", {"alpha": 1e4, "anneal": 0}, 100, STEPS, ce, pen)]  # 1e3 / 0.4
    assert "penalty_dominant" in _codes(dominant, ["cma-0000"]) and "penalty_dominant" not in _codes(grid, ["cma-0001"])
    ended_wrong = _row("cma-0003", {"alpha": 8.0, "anneal": 0}, 50, STEPS, [0.5, 0.6, 0.9, 2.5], pen, status="collapsed")
    ended_wrong.metrics["train"]["ce"] = 2.5  # scored on every training row: above log 2 = 0.693
    assert "penalty_dominant" in _codes([*grid, ended_wrong], ["cma-0001"])
    assert _codes(first, ["cma-0000"], penalties={}) == {"first_checkpoint"}  # no penalty, no penalty codes
    solver = [Result("erm", {"solver": "lbfgs"}, {}, "ok", "erm-0000", 20, 20, {"step": list(range(1, 21))})]
    assert budget(solver, {}) == {"configs": 1, "checkpoints": 1, "candidates": 1}
    assert budget(grid, {"select_checkpoint": "best"}) == {"configs": 3, "checkpoints": 4, "candidates": 12}
    assert budget(grid, {"select_checkpoint": "last"})["candidates"] == 3
    assert set(budget_checks({"erm": {"candidates": 1}, "cma": {"candidates": 12}})) == {"erm", "cma"}
    assert budget_checks({"erm": {"candidates": 4}, "cma": {"candidates": 12}}) == {}


def test_a_head_that_ends_confidently_wrong_is_marked_collapsed() -> None:
    fs = resolve(waterbirds_like(n=(400, 200, 200), d=4), "group")
    st = Settings(dtype=torch.float64)
    splits = SplitCache().get(fs, "none", st)
    good = torch.zeros(1, 2, 5, dtype=torch.float64)
    good[0, 1, 0], good[0, 0, 0] = 1.0, -1.0  # the core direction: right on most rows, not overconfident
    metrics, collapsed = score_heads(fs, splits, torch.cat([good, -20 * good]))
    assert metrics[0]["train"]["ce"] < math.log(2) < metrics[1]["train"]["ce"]
    assert collapsed.tolist() == [False, True]


def test_the_summary_contract_and_the_fit_flags_its_own_first_checkpoints(tmp_path: Path) -> None:
    fs = waterbirds_like(n=(300, 200, 200), d=6, seed=2)
    res = fit_grid(fs, ["erm", "cma"], {"alpha": [10.0, 100.0, 1e3], "beta": [1.0], "anneal": [0]}, tmp_path / "run",
                   steps=200, eval_every=25, batch_size=128)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    rows = {r.run_id: r for r in res["rows"]["cma"]}
    for m, entry in summary["methods"].items():
        test = entry["metrics"]["test"]
        assert set(test["ci95"]) == {"wga", "acc"} and test["ci95"]["wga"][0] <= test["wga"] <= test["ci95"]["wga"][1]
        assert set(entry["budget"]) >= {"configs", "checkpoints"}
        assert set(entry["by_rule"]) == {"val_wga", "val_worst_class", "val_acc", "oracle_test_wga"}
        assert all(set(v) >= {"hparams", "test"} for v in entry["by_rule"].values())
        assert all(set(d) == {"code", "message"} for d in entry["diagnostics"])
        assert ("vs_reference" in entry) == (m != "erm")
    cma = summary["methods"]["cma"]
    assert cma["vs_reference"]["method"] == "erm" and len(cma["vs_reference"]["ci95"]) == 2
    kept = rows[cma["selected"]["run_ids"][0]]
    codes = {d["code"] for d in cma["diagnostics"]}
    assert ("first_checkpoint" in codes) == (kept.best_step == 25)
    assert ("val_ties" in codes) == (cma["by_rule"]["val_wga"]["ties"] > 1)


def test_the_papers_weights_under_its_scaling_are_inert(tmp_path: Path) -> None:
    # the paper's width (100 PCA dimensions, two classes): its d·C scaling divides by 200² = 40,000
    fs = waterbirds_like(n=(600, 200, 200), d=100, seed=2)
    grid = {"alpha": [1.0], "beta": [1.0], "anneal": [0], "preprocess": ["none"]}  # in the paper's grid
    kw = {"steps": 100, "eval_every": 25, "batch_size": 128}
    res = fit_grid(fs, ["cma"], grid, tmp_path / "paper", normalize="dC", **kw)
    assert "penalty_inert" in {d["code"] for d in res["summary"].methods["cma"].diagnostics}
    res = fit_grid(fs, ["cma"], grid, tmp_path / "none", **kw)
    assert "penalty_inert" not in {d["code"] for d in res["summary"].methods["cma"].diagnostics}


def test_random_search_gives_every_method_the_same_draws_reproducibly(tmp_path: Path) -> None:
    from probe.methods import REGISTRY

    for m in ("cma", "erm", "afr", "irm"):
        first = REGISTRY[m].configs({"seed": [0, 1]}, 1000, "random:5", 3)
        assert first == REGISTRY[m].configs({"seed": [0, 1]}, 1000, "random:5", 3)
        assert len({json.dumps({k: v for k, v in c.items() if k != "seed"}) for c in first}) == 5
        assert first != REGISTRY[m].configs({"seed": [0, 1]}, 1000, "random:5", 4)
    draws = REGISTRY["cma"].configs({"beta": [1.0, 2.0]}, 1000, "random:20")
    assert {c["beta"] for c in draws} <= {1.0, 2.0} and all(10 <= c["alpha"] <= 1e5 for c in draws)
    fs = waterbirds_like(n=(200, 100, 100), d=4)
    res = fit_grid(fs, ["erm", "cma"], {}, tmp_path / "run", search="random:3", steps=40, eval_every=20,
                   reference="cma")
    assert {m: e.budget["configs"] for m, e in res["summary"].methods.items()} == {"erm": 3, "cma": 3}
    assert res["summary"].provenance["settings"]["search"] == "random:3"
    assert res["summary"].methods["erm"].vs_reference["method"] == "cma"
    with pytest.raises(UserError, match="`search` 'random:0'"):
        fit_grid(fs, ["erm"], {}, None, search="random:0")
    with pytest.raises(UserError, match="`reference` 'dfr' is not a method of this fit"):
        fit_grid(fs, ["erm"], {}, None, reference="dfr")


def test_every_format_shows_intervals_budgets_rules_and_what_to_check(tmp_path: Path) -> None:
    import csv
    import io

    from cli.console import as_text
    from probe.reports import build_report, render
    from probe.reports.formats.terminal import fit_summary

    fs = waterbirds_like(n=(300, 200, 200), d=6, seed=2)
    fit_grid(fs, ["erm", "cma"], {"alpha": [10.0, 100.0, 1e3], "beta": [1.0], "anneal": [0]}, tmp_path / "run",
             steps=100, eval_every=25, batch_size=128, group_labels="all")
    report = build_report([tmp_path / "run"])
    codes = [d["code"] for m in report.methods for d in m.diagnostics]
    assert "budget_mismatch" in codes  # 1 ERM head against 3 × 4 checkpoints
    terminal = as_text(render(report, "terminal"))
    for needle in ("Check these", "budget_mismatch", "WGA vs erm", "reference", "1 (1×1)", "12 (3×4)",
                   "all group labels read", "oracle test WGA", "95% bootstrap interval"):
        assert needle in terminal, needle
    assert "Check these" in as_text(fit_summary(tmp_path / "run"))
    cma = next(m for m in report.methods if m.method == "cma")
    lo, hi = cma.ci95["wga"]
    assert f"[{100 * lo:.1f}, {100 * hi:.1f}]" in terminal
    md = render(report, "markdown")
    assert "## Check these" in md and f"[{100 * lo:.1f}, {100 * hi:.1f}]" in md
    tex = render(report, "latex")
    assert "% Check these: cma: budget_mismatch" in tex and f"[{100 * lo:.1f}, {100 * hi:.1f}]" in tex
    rows = {r["method"]: r for r in csv.DictReader(io.StringIO(render(report, "csv")))}
    assert float(rows["cma"]["test_wga_ci_lo"]) == lo and rows["cma"]["reference"] == "erm"
    assert "budget_mismatch" in rows["erm"]["diagnostics"] and rows["erm"]["budget_configs"] == "1"
    js = json.loads(render(report, "json"))
    entry = next(c for c in js["comparison"] if c["method"] == "cma")
    assert entry["ci95"]["wga"] == [lo, hi] and entry["vs_reference"]["method"] == "erm"
    assert set(entry["by_rule"]) == {"val_wga", "val_worst_class", "val_acc", "oracle_test_wga"}
    assert js["runs"][0]["group_labels"] == "all"


def test_a_methods_interval_does_not_depend_on_the_other_methods() -> None:
    """Each method's seeds are resampled by a generator of its own: adding a method to a run,
    or listing the methods in another order, leaves every other method's interval as it was."""
    groups = np.repeat([0, 1], [150, 150])
    rng = np.random.default_rng(5)
    runs = {m: np.stack([rng.random(300) < p for p in (0.7, 0.8, 0.6)]) for m in ("a", "b", "c")}
    alone = bootstrap({"a": runs["a"]}, groups, resamples=500)["a"]["ci95"]
    with_others = bootstrap({"c": runs["c"], "b": runs["b"], "a": runs["a"]}, groups, resamples=500)["a"]["ci95"]
    assert alone == with_others
