"""The output formats of `probe report`, each registered under its name where it is defined.

A format is a function from a :class:`~probe.reports.model.Report` to text, or,
for a console, to rich renderables (the CLI prints those; the library never
drives a console). `probe report --format` takes its choices and help from
here, so a new format is one module under probe/reports/formats/ with

    @register_format("html", help="one self-contained page")
    def render_html(report: Report) -> str: ...

plus its name in probe/reports/formats/__init__.py, which imports the modules
(in the order `--help` lists them). The CLI imports every format module when
it starts, so a format imports nothing heavy at module level.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from rich.table import Table
from rich.text import Text

from probe.reports.model import Report

#: what a format renders: text, or rich renderables for a console to print in order
Rendered = str | list[Table | Text]
R = TypeVar("R", bound=Callable[..., Rendered])


@dataclass(frozen=True)
class Format:
    name: str
    help: str  # its entry in `probe report --format`'s help: "name: help"
    render: Callable[[Report], Rendered]


_FORMATS: dict[str, Format] = {}


def register_format(name: str, help: str) -> Callable[[R], R]:
    """Register the decorated function as the format ``name``."""
    def decorate(render: R) -> R:
        if name in _FORMATS:
            raise ValueError(f"format {name!r} is registered twice")
        _FORMATS[name] = Format(name=name, help=help, render=render)
        return render

    return decorate


def registered() -> dict[str, Format]:
    """Every registered format by name, in registration order."""
    return dict(_FORMATS)
