"""The review of issue 27's run records, diagnostics and reports: budgets compared method by
method, LaTeX in ASCII, the collapse test on the scored training cross-entropy, no grid edge
at a declared bound or under random search, one budget count everywhere, diagnostics under
every layout, ``nonfinite`` through a resume, and a difference equal to the figures shown."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from probe.records.results import Result, parse_results, to_jsonl
from probe.records.rules import headline_rules
from probe.records.summary import MethodSummary, Selected
from probe.reports import build_report, render
from probe.reports.model import SELECTION_NAMES
from probe.reports.registry import registered
from probe.reports.tables import budget_text, cell_text, comparison_table
from probe.runs.checks import budget_checks, method_checks
from probe.runs.review import annotate, declared_bounds
from tests.runfolders import CMA_GRID, ERM_GRID, edit_summary, write_run_folder
from tests.test_review import STEPS, _row

LOG2 = math.log(2)  # the class prior's cross-entropy of _row's 500/500 training classes


def test_budget_mismatch_flags_only_the_methods_10x_from_another_and_names_it() -> None:
    found = budget_checks({"erm": {"candidates": 10}, "reweight": {"candidates": 60}, "cma": {"candidates": 270}})
    assert set(found) == {"erm", "cma"}  # reweight is within 10x of both (6x, 4.5x)
    assert "cma among 270" in found["erm"][0]["message"] and "reweight" not in found["erm"][0]["message"]
    assert "erm among 10" in found["cma"][0]["message"] and "reweight" not in found["cma"][0]["message"]
    assert budget_checks({"erm": {"candidates": 4}, "cma": {"candidates": 12}}) == {}


def _trained(run_id: str, hp: dict, train_ce: float, history_ce: float, status: str = "ok") -> Result:
    row = _row(run_id, {"anneal": 0, **hp}, 100, STEPS, [0.5, 0.4, 0.3, history_ce], {"grad": [1e-1] * 4},
               status=status)
    row.metrics["train"]["ce"] = train_ce
    return row


def _dominant(rows: list[Result], selected: str) -> list[str]:
    found = method_checks(rows, [selected], {"select_checkpoint": "best"}, {"grad": "alpha"}, 1)
    return [d["message"] for d in found if d["code"] == "penalty_dominant"]


def test_penalty_dominant_reads_the_scored_training_ce_with_the_collapse_margin() -> None:
    grid = [_trained(f"cma-{i:04d}", {"alpha": a}, 0.3, 0.3) for i, a in enumerate((1.0, 2.0, 4.0))]
    # a head predicting the class split (its minibatch CE, domain-weighted, logged above log 2),
    # and one a hair above the prior by batch noise: neither is confidently wrong
    split = _trained("cma-0003", {"alpha": 8.0}, LOG2, 0.9)
    noise = _trained("cma-0004", {"alpha": 16.0}, 1.005 * LOG2, 0.8)
    assert _dominant([*grid, split, noise], "cma-0001") == []
    # confidently wrong on every training row, at two seeds: one configuration, not two rows
    wrong = [_trained(f"cma-{5 + s:04d}", {"alpha": 32.0, "seed": s}, 2.5, 0.2, "collapsed") for s in (0, 1)]
    messages = _dominant([*grid, split, noise, *wrong], "cma-0001")
    assert len(messages) == 1 and messages[0].startswith("1 of 6 configurations"), messages


def _edge_codes(rows: list[Result], selected: str, **settings: Any) -> list[str]:
    summ = {"cma": MethodSummary(Selected({}, [selected]))}
    annotate(summ, {"cma": rows}, {"select_checkpoint": "best", **settings})
    return [d["message"] for d in summ["cma"].diagnostics or [] if d["code"] == "grid_edge"]


def test_grid_edge_skips_a_declared_bound_and_random_search() -> None:
    assert declared_bounds("cma")["anneal"][0] == 0
    anneal = [_trained(f"cma-{i:04d}", {"alpha": 2.0, "anneal": a}, 0.3, 0.3) for i, a in enumerate((0, 25, 50))]
    assert _edge_codes(anneal, "cma-0000") == []  # anneal 0: nothing lies below it
    assert "anneal=50" in _edge_codes(anneal, "cma-0002")[0]
    alpha = [_trained(f"cma-{i:04d}", {"alpha": a}, 0.3, 0.3) for i, a in enumerate((1.0, 2.0, 4.0))]
    assert "alpha=4" in _edge_codes(alpha, "cma-0002")[0]
    assert _edge_codes(alpha, "cma-0002", search="random:3") == []  # draws: an edge by chance


def test_the_budget_column_shows_the_candidates_the_check_compares() -> None:
    def text(**b: int) -> str:
        return budget_text(SimpleNamespace(entry=MethodSummary(None, budget=b)))  # type: ignore[arg-type]

    assert text(configs=18, checkpoints=20, candidates=270) == "270 (18×≤20)"
    assert text(configs=18, checkpoints=4, candidates=72) == "72 (18×4)"
    assert text(configs=1, checkpoints=1, candidates=1) == "1 (1×1)"
    assert text(configs=3, checkpoints=4) == "3×4"  # a summary written before candidates were counted


def _run_with_reference(tmp_path: Path) -> Path:
    """A run of erm and cma with cma's intervals, its difference to erm, budgets and a
    diagnostic whose message has non-ASCII symbols, as a fit writes them."""
    run = tmp_path / "run"
    write_run_folder(run, {"erm": ERM_GRID, "cma": CMA_GRID}, seeds=(0, 1, 2))

    def edit(summary: dict[str, Any]) -> None:
        erm, cma = summary["methods"]["erm"], summary["methods"]["cma"]
        cma["metrics"]["test"]["ci95"] = {"wga": [0.6, 0.7], "acc": [0.8, 0.9]}
        cma["vs_reference"] = {"method": "erm", "diff": cma["metrics"]["test"]["wga"] - erm["metrics"]["test"]["wga"],
                               "ci95": [0.1, 0.3]}
        erm["budget"], erm["diagnostics"] = {"configs": 3, "checkpoints": 1, "candidates": 3}, []
        cma["budget"] = {"configs": 12, "checkpoints": 10, "candidates": 100}
        cma["diagnostics"] = [{"code": "penalty_dominant", "message": "the penalty is 4.8e+04× the cross-entropy "
                                                                      "(Δ∇L ≥ 0.1 – α, β)"}]

    edit_summary(run, edit)
    return run


def test_every_latex_layout_is_ascii_and_carries_the_checks(tmp_path: Path) -> None:
    report = build_report([_run_with_reference(tmp_path)])
    layouts = registered()["latex"].layouts
    assert set(layouts) == {"standard", "paper"}
    for layout in layouts:
        tex = render(report, "latex", layout)
        assert isinstance(tex, str)
        assert tex.isascii(), (layout, sorted({ch for ch in tex if not ch.isascii()}))
        assert "% Check these: cma: penalty_dominant: the penalty is 4.8e+04$\\times$ the cross-entropy" in tex
    tex = render(report, "latex")
    assert "$\\Delta$ WGA vs erm" in tex and "100 (12$\\times\\leq$10)" in tex  # math after math joins it


def test_the_paper_layouts_show_the_checks_under_the_table(tmp_path: Path) -> None:
    from cli.console import as_text

    report = build_report([_run_with_reference(tmp_path)])
    md = render(report, "markdown", "paper")
    assert isinstance(md, str)
    assert md.index("## Check these") > md.index("| Method |") and "- cma: penalty_dominant:" in md
    text = as_text(render(report, "terminal", "paper"))
    assert text.index("Check these") > text.index("Worst-Group") and "- cma: penalty_dominant:" in text


def test_the_difference_is_that_of_the_figures_shown(tmp_path: Path) -> None:
    from probe.domains import resolve
    from tests.test_trainer import waterbirds_like

    fs = resolve(waterbirds_like(n=(200, 100, 300), d=4, seed=1), "group")
    heads = {"erm": torch.zeros(2, 5, dtype=torch.float64), "cma": torch.zeros(2, 5, dtype=torch.float64)}
    heads["cma"][1, 0], heads["cma"][0, 0] = 1.0, -1.0  # the core feature: better than the constant head
    rows = {m: [Result(m, {"preprocess": "none", "seed": 0}, run_id=f"{m}-0000", theta=h)] for m, h in heads.items()}
    # figures a fit scored in its own precision, which re-scoring the heads need not reproduce
    shown = {"erm": {"wga": 0.25, "acc": 0.5}, "cma": {"wga": 0.625, "acc": 0.75}}
    summ = {m: MethodSummary(Selected({}, [f"{m}-0000"]), metrics={"test": dict(shown[m])}) for m in rows}
    annotate(summ, rows, {}, fs)
    vs = summ["cma"].vs_reference
    assert vs is not None and vs["method"] == "erm"
    assert vs["diff"] == shown["cma"]["wga"] - shown["erm"]["wga"]
    assert vs["diff_acc"] == shown["cma"]["acc"] - shown["erm"]["acc"]


def test_the_shown_difference_is_the_difference_of_the_shown_columns(tmp_path: Path) -> None:
    table = comparison_table(build_report([_run_with_reference(tmp_path)]))
    cma = next(r for r in table.rows if r[0] == "cma")
    erm = next(r for r in table.rows if r[0] == "erm")
    col = table.headers.index("Test WGA")
    wga = [float(cell_text(r[col]).split()[0]) for r in (cma, erm)]
    delta = float(cell_text(cma[-1]).split()[0])
    assert abs(delta - (wga[0] - wga[1])) <= 0.1 + 1e-9  # each figure rounded on its own


def test_a_resumed_row_still_says_which_nulls_were_nan(tmp_path: Path) -> None:
    from probe.runs.resume import RunSession

    row = Result("cma", {"alpha": 1.0, "seed": 0}, {"train": {"ce": float("nan")}}, "diverged", "cma-0000",
                 history={"step": [1, 2], "loss": [0.5, float("nan")]}, theta=torch.zeros(2, 3))
    first = parse_results(to_jsonl([row]), "first")[0]
    assert first.nonfinite == ["metrics.train.ce", "history.loss.1"]
    with RunSession(tmp_path / "run", "fingerprint", overwrite=False) as session:
        session.save_chunk([row])
        resumed = session.finished()["cma"][0]
    again = parse_results(to_jsonl([resumed]), "again")[0]
    assert again.history["loss"] == [0.5, None] and again.nonfinite == ["metrics.train.ce", "history.loss.1"]


def test_every_headline_rule_has_a_name_in_reports(tmp_path: Path) -> None:
    assert set(headline_rules()) <= set(SELECTION_NAMES)
    run = tmp_path / "run"
    write_run_folder(run, {"erm": ERM_GRID})
    edit_summary(run, lambda s: s["provenance"].update(selection="val_worst_class"))
    assert build_report([run]).selection() == "validation worst-class accuracy"
