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

A format renders the ``standard`` layout (comparison, selection, per-group and grid
tables) and may render others: ``@register_format("latex", help=..., layout="paper")``
adds the paper's table shape to an existing format. `probe report --layout` takes
its choices from the layouts registered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from rich.table import Table
from rich.text import Text

from probe.reports.model import Report

#: what a format renders: text, or rich renderables for a console to print in order
Rendered = str | list[Table | Text]
R = TypeVar("R", bound=Callable[..., Rendered])


LAYOUTS = {"standard": "comparison, selection, per-group and grid tables",
           "paper": "the CMA paper's table: rows methods, columns dataset × {Average, Worst-Group}, "
                    "mean ± SEM over seeds, one run folder per dataset"}


@dataclass
class Format:
    name: str
    help: str  # its entry in `probe report --format`'s help: "name: help"
    layouts: dict[str, Callable[[Report], Rendered]] = field(default_factory=dict)

    @property
    def render(self) -> Callable[[Report], Rendered]:
        return self.layouts["standard"]


_FORMATS: dict[str, Format] = {}


def register_format(name: str, help: str = "", layout: str = "standard") -> Callable[[R], R]:
    """Register the decorated function as the format ``name``'s ``layout``."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} is not one of {', '.join(LAYOUTS)}")

    def decorate(render: R) -> R:
        fmt = _FORMATS.setdefault(name, Format(name=name, help=help))
        if layout in fmt.layouts:
            raise ValueError(f"format {name!r} registers its {layout} layout twice")
        fmt.layouts[layout] = render
        fmt.help = fmt.help or help
        return render

    return decorate


def registered() -> dict[str, Format]:
    """Every registered format by name, in registration order."""
    return dict(_FORMATS)
