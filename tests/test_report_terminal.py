"""`--format terminal`: rich renderables the CLI prints; and the table at the end of `probe fit`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from rich.table import Table

from cli.console import as_text
from cli.fit import _report
from probe.reports import build_report, render
from tests.runfolders import expected, pct, two_runs


@pytest.fixture()
def runs(tmp_path: Path) -> dict[str, Any]:
    return two_runs(tmp_path)


def test_terminal_renders_all_tables(runs: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    rendered = render(build_report([runs["a"], runs["b"]]), "terminal")
    assert capsys.readouterr().out == ""  # the library renders, it does not print
    assert isinstance(rendered, list) and sum(isinstance(r, Table) for r in rendered) == 4 + 4
    text = as_text(rendered)
    for needle in ("Comparison", "Test Avg", "(train-weighted)", "(group mean)", "Per-group",
                   "alpha varied", "weight_decay varied", "landbird/water", "selected"):
        assert needle in text
    assert "\x1b[" not in text  # plain text when not printing to a terminal
    assert text.startswith(f"run_a ({runs['a']}): dataset waterbirds")


def test_fit_summary(runs: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    _report(runs["a"], quiet=False)
    out = capsys.readouterr().out
    mean, std = expected(runs["fa"]["rows"]["cma"], "test", "wga")
    for needle in ("Comparison", "cma", pct(mean, std), "results.jsonl", "summary.json",
                   "heads/cma.safetensors", "--plots"):
        assert needle in out
    assert "alpha varied" not in out  # the grid is for `probe report`
    _report(runs["a"], quiet=True)
    assert capsys.readouterr().out == ""
