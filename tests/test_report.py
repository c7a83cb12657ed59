"""probe report / probe.plots over fake run folders written per docs/results-format.md."""

from __future__ import annotations

import csv
import io
import json
import shutil
import statistics
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from base.errors import UserError
from cli.main import main
from probe.plots import alpha_beta_grid, write_plots
from probe.report import (
    build_report,
    print_fit_summary,
    render,
    write_demo_outputs,
    write_report,
)

try:
    from tests.runfolders import CMA_GRID, ERM_GRID, GROUPS, write_run_folder
except ImportError:  # pytest's rootdir-relative import when tests/ is not a package
    from runfolders import CMA_GRID, ERM_GRID, GROUPS, write_run_folder

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
COMPARISON_HEADER = (
    "| Method | Seeds | Val WGA | Test WGA | Test Acc | Test Avg (train-weighted) "
    "| Test Avg (group mean) |"
)


@pytest.fixture()
def runs(tmp_path: Path) -> dict[str, Any]:
    """run_a: cma (2 seeds, one diverged configuration); run_b: erm (3 seeds)."""
    a = write_run_folder(tmp_path / "run_a", {"cma": CMA_GRID}, seeds=(0, 1),
                         diverged={"cma": [{"alpha": 1e4, "beta": 1.0, "anneal": 100}]})
    b = write_run_folder(tmp_path / "run_b", {"erm": ERM_GRID}, seeds=(0, 1, 2))
    return {"a": tmp_path / "run_a", "b": tmp_path / "run_b", "fa": a, "fb": b}


def _expected(rows: list[dict[str, Any]], split: str, key: str) -> tuple[float, float]:
    vals = [r["metrics"][split][key] for r in rows]
    return statistics.fmean(vals), statistics.stdev(vals)


def _pct(mean: float, std: float) -> str:
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def test_one_comparison_table_over_two_folders(runs: dict[str, Any]) -> None:
    report = build_report([runs["a"], runs["b"]])
    assert [m.label for m in report.methods] == ["cma", "erm"]
    md = render(report, "markdown")
    assert md.count(COMPARISON_HEADER) == 1
    lines = md.splitlines()
    start = lines.index(COMPARISON_HEADER)
    rows = lines[start + 2:start + 4]
    for row, method, fixture in zip(rows, ["cma", "erm"], [runs["fa"], runs["fb"]], strict=True):
        sel = fixture["rows"][method]
        assert row.startswith(f"| {method} | {len(sel)} |")
        for split, key in [("val", "wga"), ("test", "acc"), ("test", "acc_train_weighted"),
                           ("test", "acc_group_mean")]:
            assert _pct(*_expected(sel, split, key)) in row
    # cma has the best test WGA: bold in Markdown.
    assert f"**{_pct(*_expected(runs['fa']['rows']['cma'], 'test', 'wga'))}**" in rows[0]


def test_report_uses_the_summary_selection(runs: dict[str, Any]) -> None:
    report = build_report([runs["a"]])
    (m,) = report.methods
    assert m.selected == runs["fa"]["selected"]["cma"]
    assert m.selected_config is not None
    assert [r["run_id"] for r in m.selected_config.rows] == m.run_ids
    assert m.n_seeds == 2 and m.n_diverged == 2 and m.n_configs == 13
    assert m.varied == ["alpha", "beta", "anneal"]


def test_results_fill_in_a_summary_without_seed_statistics(runs: dict[str, Any]) -> None:
    path = runs["a"] / "summary.json"
    summary = json.loads(path.read_text())
    del summary["methods"]["cma"]["seeds"]
    path.write_text(json.dumps(summary))
    (m,) = build_report([runs["a"]]).methods
    mean, std = _expected(runs["fa"]["rows"]["cma"], "test", "wga")
    assert m.get("test", "wga").mean == pytest.approx(mean)
    assert m.get("test", "wga").std == pytest.approx(std)


def test_same_method_in_two_folders_is_labelled_by_folder(tmp_path: Path) -> None:
    write_run_folder(tmp_path / "run_a", {"cma": CMA_GRID})
    write_run_folder(tmp_path / "run_c", {"cma": {"alpha": [10.0, 100.0], "beta": [1.0],
                                                  "anneal": [0]}})
    report = build_report([tmp_path / "run_a", tmp_path / "run_c"])
    assert [m.label for m in report.methods] == ["cma (run_a)", "cma (run_c)"]
    md = render(report, "markdown")
    assert md.count(COMPARISON_HEADER) == 1
    assert "| cma (run_a) |" in md and "| cma (run_c) |" in md
    # Same folder name under different parents: the parent tells them apart.
    write_run_folder(tmp_path / "x" / "run", {"cma": CMA_GRID})
    write_run_folder(tmp_path / "y" / "run", {"cma": CMA_GRID})
    labels = [m.label for m in build_report([tmp_path / "x" / "run", tmp_path / "y" / "run"]).methods]
    assert labels == ["cma (x/run)", "cma (y/run)"]


def test_csv_parses_with_fractions(runs: dict[str, Any]) -> None:
    text = render(build_report([runs["a"], runs["b"]]), "csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["label"] for r in rows] == ["cma", "erm"]
    for r, fixture, method in zip(rows, [runs["fa"], runs["fb"]], ["cma", "erm"], strict=True):
        mean, std = _expected(fixture["rows"][method], "test", "wga")
        assert float(r["test_wga_mean"]) == pytest.approx(mean)
        assert float(r["test_wga_std"]) == pytest.approx(std)
        assert json.loads(r["selected_hparams"]) == fixture["selected"][method]
        for g in GROUPS:
            assert 0.0 <= float(r[f"test_group[{g}]_acc_mean"]) <= 1.0
            assert int(r[f"test_group[{g}]_n"]) > 0


def test_json_parses_and_holds_everything(runs: dict[str, Any]) -> None:
    data = json.loads(render(build_report([runs["a"], runs["b"]]), "json"))
    comp = {c["label"]: c for c in data["comparison"]}
    assert set(comp) == {"cma", "erm"}
    mean, _ = _expected(runs["fb"]["rows"]["erm"], "val", "wga")
    assert comp["erm"]["val"]["wga"]["mean"] == pytest.approx(mean)
    assert comp["cma"]["n_seeds"] == 2 and comp["erm"]["n_seeds"] == 3
    assert set(data["per_group"][0]["test"]) == set(GROUPS)
    grid = {g["label"]: g for g in data["grid"]}
    assert grid["cma"]["mode"] == "one-at-a-time"
    assert [s["hparam"] for s in grid["cma"]["slices"]] == ["alpha", "beta", "anneal"]
    for entry in data["comparison"]:
        for split in ("val", "test"):
            for stat in entry[split].values():
                assert 0.0 <= stat["mean"] <= 1.0


def test_latex_is_booktabs_with_the_best_test_wga_bold(runs: dict[str, Any]) -> None:
    tex = render(build_report([runs["a"], runs["b"]]), "latex")
    for token in ("\\toprule", "\\midrule", "\\bottomrule", "\\begin{tabular}", "\\caption{"):
        assert token in tex
    best = _expected(runs["fa"]["rows"]["cma"], "test", "wga")
    assert f"\\textbf{{{100 * best[0]:.1f} $\\pm$ {100 * best[1]:.1f}}}" in tex
    comparison = tex.split("\\label{tab:probe-comparison}")[1].split("\\end{table}")[0]
    assert comparison.count("\\textbf{") == 1
    assert "selected by validation worst-group accuracy" in tex
    assert "Avg (train-weighted)" in tex and "Avg (group mean)" in tex
    assert "CMA &" in tex and "ERM &" in tex


def test_latex_bolds_every_tied_best(tmp_path: Path) -> None:
    write_run_folder(tmp_path / "one", {"cma": CMA_GRID})
    shutil.copytree(tmp_path / "one", tmp_path / "two")
    tex = render(build_report([tmp_path / "one", tmp_path / "two"]), "latex")
    comparison = tex.split("\\label{tab:probe-comparison}")[1].split("\\end{table}")[0]
    assert comparison.count("\\textbf{") == 2
    assert "CMA (one)" in comparison and "CMA (two)" in comparison


def test_terminal_renders_all_tables(runs: dict[str, Any]) -> None:
    text = render(build_report([runs["a"], runs["b"]]), "terminal")
    for needle in ("Comparison", "Test Avg", "(train-weighted)", "(group mean)", "Per-group",
                   "alpha varied", "weight_decay varied", "landbird/water", "selected"):
        assert needle in text
    assert "\x1b[" not in text  # plain text when not printing to a terminal


def test_grid_slices_vary_one_hyperparameter_at_a_time(runs: dict[str, Any]) -> None:
    (m,) = build_report([runs["a"]]).methods
    sel = runs["fa"]["selected"]["cma"]
    slices = {k: (fixed, configs) for k, fixed, configs in m.grid_slices()}
    fixed, configs = slices["alpha"]
    assert fixed == {"beta": sel["beta"], "anneal": sel["anneal"]}
    # The diverged alpha=1e4 configuration shares beta=1, anneal=100 with the selection.
    assert [c.hparams["alpha"] for c in configs] == [10.0, 100.0, 1000.0, 1e4]
    assert configs[-1].status == "2/2 diverged"
    assert configs[-1].get("val", "wga").mean is None
    assert sum(c is m.selected_config for c in configs) == 1
    results = [json.loads(x) for x in (runs["a"] / "results.jsonl").read_text().splitlines()]
    for c in configs[:-1]:
        rows = [r for r in results if r["hparams"]["alpha"] == c.hparams["alpha"]
                and r["hparams"]["beta"] == sel["beta"] and r["hparams"]["anneal"] == sel["anneal"]]
        assert c.get("val", "wga").mean == pytest.approx(_expected(rows, "val", "wga")[0])
    assert [c.hparams["anneal"] for c in slices["anneal"][1]] == [0, 100]


def test_heatmap_cells_take_the_best_validation_config(runs: dict[str, Any]) -> None:
    (m,) = build_report([runs["a"]]).methods
    grid = alpha_beta_grid(m)
    assert grid is not None
    alphas, betas, cells = grid
    assert alphas == [10.0, 100.0, 1000.0, 1e4] and betas == [1.0, 10.0]
    results = [json.loads(x) for x in (runs["a"] / "results.jsonl").read_text().splitlines()]
    for i, a in enumerate(alphas[:3]):
        for j, b in enumerate(betas):
            by_anneal = {}
            for anneal in CMA_GRID["anneal"]:
                rows = [r for r in results if r["hparams"]["alpha"] == a
                        and r["hparams"]["beta"] == b and r["hparams"]["anneal"] == anneal]
                by_anneal[anneal] = _expected(rows, "val", "wga")[0]
            assert cells[i][j].hparams["anneal"] == max(by_anneal, key=by_anneal.get)
    assert cells[3][0].status == "2/2 diverged" and cells[3][1] is None


def test_plots_are_png_files(runs: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "figs" / "nested"
    paths = write_plots([runs["a"], runs["b"]], out)
    assert sorted(p.name for p in paths) == [
        "curves_cma.png", "curves_erm.png", "per_group_test_acc.png", "wga_heatmap_cma.png"]
    for p in paths:
        data = p.read_bytes()
        assert data[:8] == PNG_SIGNATURE and len(data) > 1000
        with Image.open(p) as im:
            assert im.size[0] > 400 and im.size[1] > 300
    assert sorted(out.iterdir()) == sorted(paths)  # no temporary files left behind


def test_plots_refuse_a_file_as_folder(runs: dict[str, Any], tmp_path: Path) -> None:
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(UserError, match="afile"):
        write_plots([runs["a"]], f)


def _broken(tmp_path: Path, runs: dict[str, Any], what: str) -> tuple[Path, str]:
    run = runs["a"]
    if what == "missing_dir":
        return tmp_path / "nope", "nope"
    if what == "file":
        return run / "summary.json", "not a folder"
    if what == "no_summary":
        (run / "summary.json").unlink()
        return run, "summary.json is missing"
    if what == "no_results":
        (run / "results.jsonl").unlink()
        return run, "results.jsonl is missing"
    if what == "bad_summary":
        (run / "summary.json").write_text('{"methods": {')
        return run, "summary.json is not valid JSON"
    if what == "bad_results":
        lines = (run / "results.jsonl").read_text().splitlines()
        lines[1] = lines[1][:40]
        (run / "results.jsonl").write_text("\n".join(lines) + "\n")
        return run, "results.jsonl line 2 is not valid JSON"
    if what == "no_methods":
        (run / "summary.json").write_text('{"provenance": {}}')
        return run, "summary.json has no 'methods'"
    if what == "row_without_hparams":
        (run / "results.jsonl").write_text('{"method": "cma"}\n')
        return run, "results.jsonl line 1 has no 'hparams'"
    raise AssertionError(what)


BROKEN = ["missing_dir", "file", "no_summary", "no_results", "bad_summary", "bad_results",
          "no_methods", "row_without_hparams"]


@pytest.mark.parametrize("what", BROKEN)
def test_bad_run_folders_are_one_line_user_errors(
    what: str, runs: dict[str, Any], tmp_path: Path
) -> None:
    path, needle = _broken(tmp_path, runs, what)
    with pytest.raises(UserError) as info:
        build_report([path])
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("what", ["missing_dir", "bad_results"])
def test_cli_exits_2_with_one_line(
    what: str, runs: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, needle = _broken(tmp_path, runs, what)
    with pytest.raises(SystemExit) as info:
        main(["report", str(path)])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("probe: error:") and needle in err and "\n" not in err


def test_cli_rejects_an_unknown_format(runs: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["report", str(runs["a"]), "--format", "html"])
    assert info.value.code == 2
    assert "--format" in capsys.readouterr().err


def test_cli_demo_shape_writes_report_and_pngs(runs: dict[str, Any]) -> None:
    run = runs["a"]
    with pytest.raises(SystemExit) as info:
        main(["report", str(run), "--format", "markdown", "--out", str(run / "report.md"),
              "--plots", str(run)])
    assert info.value.code == 0
    md = (run / "report.md").read_text()
    assert md.startswith("# probe report") and COMPARISON_HEADER in md
    assert (run / "wga_heatmap_cma.png").read_bytes()[:8] == PNG_SIGNATURE
    assert (run / "per_group_test_acc.png").is_file() and (run / "curves_cma.png").is_file()


@pytest.mark.parametrize("fmt", ["terminal", "markdown", "csv", "json", "latex"])
def test_cli_out_writes_each_format(fmt: str, runs: dict[str, Any], tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / f"report.{fmt}"
    with pytest.raises(SystemExit) as info:
        main(["report", str(runs["a"]), str(runs["b"]), "--format", fmt, "--out", str(out)])
    assert info.value.code == 0
    assert capsys.readouterr().out == ""  # written, not printed
    assert out.read_text() == render(build_report([runs["a"], runs["b"]]), fmt)


def test_cli_prints_when_no_out(runs: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["report", str(runs["a"]), str(runs["b"]), "--format", "csv"])
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["method"] for r in rows] == ["cma", "erm"]


def test_cli_help_describes_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["report", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for needle in ("RUN_DIR", "--format", "--out", "--plots", "terminal", "markdown", "csv",
                   "json", "latex"):
        assert needle in text


def test_write_report_to_a_missing_folder_is_a_user_error(runs: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        write_report([runs["a"]], fmt="markdown", out=tmp_path / "missing" / "r.md")


def test_print_fit_summary(runs: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    print_fit_summary(runs["a"])
    out = capsys.readouterr().out
    mean, std = _expected(runs["fa"]["rows"]["cma"], "test", "wga")
    for needle in ("Comparison", "cma", _pct(mean, std), "results.jsonl", "summary.json",
                   "heads/cma.safetensors", "--plots"):
        assert needle in out
    print_fit_summary(runs["a"], quiet=True)
    assert capsys.readouterr().out == ""


def test_write_demo_outputs(runs: dict[str, Any]) -> None:
    paths = write_demo_outputs(runs["a"])
    assert paths[0] == runs["a"] / "report.md"
    assert "## Per-group test accuracy" in paths[0].read_text()
    assert {p.suffix for p in paths[1:]} == {".png"} and len(paths) == 4
    assert all(p.is_file() for p in paths)


def test_selection_by_val_acc_is_named(runs: dict[str, Any]) -> None:
    path = runs["a"] / "summary.json"
    summary = json.loads(path.read_text())
    summary["provenance"]["selection"] = "val_acc"
    path.write_text(json.dumps(summary))
    md = render(build_report([runs["a"]]), "markdown")
    assert "selected by validation accuracy" in md and "validation WGA" not in md


def test_a_method_with_nothing_selected_shows_dashes(runs: dict[str, Any]) -> None:
    path = runs["b"] / "summary.json"
    summary = json.loads(path.read_text())
    entry = summary["methods"]["erm"]
    entry["selected"] = None
    del entry["seeds"], entry["metrics"]
    path.write_text(json.dumps(summary))
    report = build_report([runs["a"], runs["b"]])
    md = render(report, "markdown")
    assert "| erm | 0 | – | – | – | – | – |" in md
    assert json.loads(render(report, "json"))["comparison"][1]["test"]["wga"]["mean"] is None
    tex = render(report, "latex")
    assert "ERM & -- & -- & -- & -- & --" in tex
