"""The format registry: every format renders, the CLI's --format comes from it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from base.errors import UserError
from cli.main import flag_names
from cli.report import FORMAT_HELP, FormatChoice
from probe.reports import build_report, format_names, get_format, register_format, render
from tests.runfolders import two_runs


@pytest.fixture()
def runs(tmp_path: Path) -> dict[str, Any]:
    return two_runs(tmp_path)


def test_the_five_formats_in_help_order() -> None:
    assert format_names() == ["terminal", "markdown", "csv", "json", "latex"]


def test_cli_choices_and_help_come_from_the_registry() -> None:
    assert [c.value for c in FormatChoice] == format_names()
    for name in format_names():
        assert f"{name}: {get_format(name).help}" in FORMAT_HELP


@pytest.mark.parametrize("fmt", ["terminal", "markdown", "csv", "json", "latex"])
def test_every_format_renders(fmt: str, runs: dict[str, Any]) -> None:
    rendered = render(build_report([runs["a"], runs["b"]]), fmt)
    assert rendered and isinstance(rendered, (str, list))


def test_an_unknown_format_names_the_parameter() -> None:
    with pytest.raises(UserError) as info:
        get_format("html")
    message = str(info.value)
    assert message == "`fmt` 'html' is not a format; use one of terminal, markdown, csv, json, latex"
    # On the command line the parameter is the flag.
    assert flag_names(message, ["report"]).startswith("--format 'html' is not a format")


def test_a_name_registers_once() -> None:
    with pytest.raises(ValueError, match="twice"):
        register_format("markdown", help="again")(lambda report: "")
