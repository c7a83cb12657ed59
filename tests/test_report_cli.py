"""`probe report` on the command line: exit codes, one-line errors, --out, --plots, printing."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytest

from cli.console import as_text
from cli.main import main
from probe.reports import build_report, render
from probe.reports.demo import write_demo_outputs
from tests.runfolders import broken, two_runs

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture()
def runs(tmp_path: Path) -> dict[str, Any]:
    return two_runs(tmp_path)


def _exit_code(args: list[str]) -> int | str | None:
    with pytest.raises(SystemExit) as info:
        main(args)
    return info.value.code


@pytest.mark.parametrize("what", ["missing_dir", "bad_results"])
def test_cli_exits_2_with_one_line(
    what: str, runs: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, needle = broken(tmp_path, runs, what)
    assert _exit_code(["report", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("probe: error:") and needle in err and "\n" not in err


def test_cli_rejects_an_unknown_format(runs: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    assert _exit_code(["report", str(runs["a"]), "--format", "html"]) == 2
    assert "--format" in capsys.readouterr().err


def test_cli_names_the_plots_flag(runs: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    f = runs["a"] / "summary.json"
    assert _exit_code(["report", str(runs["a"]), "--plots", str(f)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"probe: error: --plots {f} is a file, not a folder; choose a folder for the figures")


def test_cli_demo_shape_writes_report_and_pngs(runs: dict[str, Any]) -> None:
    run = runs["a"]
    assert _exit_code(["report", str(run), "--format", "markdown", "--out", str(run / "report.md"),
                       "--plots", str(run)]) == 0
    md = (run / "report.md").read_text()
    assert md.startswith("# probe report") and "| Method | Seeds | Budget | Val WGA |" in md
    assert (run / "wga_heatmap_cma.png").read_bytes()[:8] == PNG_SIGNATURE
    assert (run / "per_group_test_acc.png").is_file() and (run / "curves_cma.png").is_file()


@pytest.mark.parametrize("fmt", ["terminal", "markdown", "csv", "json", "latex"])
def test_cli_out_writes_each_format(fmt: str, runs: dict[str, Any], tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / f"report.{fmt}"
    assert _exit_code(["report", str(runs["a"]), str(runs["b"]), "--format", fmt, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""  # written, not printed
    assert captured.err == f"wrote {out}\n"
    assert out.read_text() == as_text(render(build_report([runs["a"], runs["b"]]), fmt))


def test_cli_prints_when_no_out(runs: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    assert _exit_code(["report", str(runs["a"]), str(runs["b"]), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["method"] for r in rows] == ["cma", "erm"]


def test_cli_prints_the_terminal_tables_as_out_writes_them(
    runs: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert _exit_code(["report", str(runs["a"])]) == 0
    printed = capsys.readouterr().out
    assert printed == as_text(render(build_report([runs["a"]]), "terminal"))


def test_cli_help_describes_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert _exit_code(["report", "--help"]) == 0
    text = capsys.readouterr().out
    for needle in ("RUN_DIR", "--format", "--out", "--plots", "terminal", "markdown", "csv",
                   "json", "latex"):
        assert needle in text


def test_out_into_a_missing_folder_is_a_user_error(
    runs: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "missing" / "r.md"
    assert _exit_code(["report", str(runs["a"]), "--format", "markdown", "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err and not out.parent.exists()


def test_write_demo_outputs(runs: dict[str, Any]) -> None:
    paths = write_demo_outputs(runs["a"])
    assert paths[0] == runs["a"] / "report.md"
    assert "## Per-group test accuracy" in paths[0].read_text()
    assert {p.suffix for p in paths[1:]} == {".png"} and len(paths) == 4
    assert all(p.is_file() for p in paths)
