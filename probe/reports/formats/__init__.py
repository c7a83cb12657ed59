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


def render(report: Report, fmt: str) -> Rendered:
    """The report in ``fmt``: text, or rich renderables for the terminal format."""
    return get_format(fmt).render(report)
