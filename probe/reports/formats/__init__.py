"""Every output format of `probe report`, one module each (see probe.reports.registry).

Importing this package registers them all; the order below is the order
`probe report --help` lists them in, the default first.
"""

from __future__ import annotations

from base.errors import UserError
from probe.reports.model import Report
from probe.reports.registry import Format, Rendered, registered

# Registers every format, in the order `--help` lists them.
from probe.reports.formats import terminal, markdown, csv, json, latex  # noqa: F401  # isort: skip


def format_names() -> list[str]:
    return list(registered())


def get_format(fmt: str) -> Format:
    """The format named ``fmt``; a UserError naming the choices for any other name."""
    formats = registered()
    if fmt not in formats:
        raise UserError(f"`fmt` {fmt!r} is not a format; use one of {', '.join(formats)}")
    return formats[fmt]


def render(report: Report, fmt: str, layout: str = "standard") -> Rendered:
    """The report in ``fmt``'s ``layout``: text, or rich renderables for the terminal format."""
    f = get_format(fmt)
    if layout not in f.layouts:
        shown = ", ".join(n for n in format_names() if layout in registered()[n].layouts)
        raise UserError(f"`layout` {layout!r} is not rendered by format {fmt!r}; it is by {shown or 'none'}")
    return f.layouts[layout](report)
