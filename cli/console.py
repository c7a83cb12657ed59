"""The one place that drives a rich console: the library renders, the CLI shows.

What a report format renders is text or rich renderables
(:data:`probe.reports.Rendered`); :func:`show` prints either on stdout and
:func:`as_text` lays either out as the text a file gets.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Iterable

from rich.console import Console, RenderableType

# Wide enough for the comparison table's seven columns without wrapping.
TEXT_WIDTH = 160


def stdout_console() -> Console:
    console = Console()
    # Redirected output has no width; 80 columns would wrap the wide tables.
    return console if console.is_terminal else Console(width=TEXT_WIDTH)


def show(rendered: str | Iterable[RenderableType]) -> None:
    """Print on stdout: text as it is, renderables one after another on a console."""
    if isinstance(rendered, str):
        sys.stdout.write(rendered)
        return
    console = stdout_console()
    for item in rendered:
        console.print(item)


def as_text(rendered: str | Iterable[RenderableType]) -> str:
    """Text as it is; renderables as plain text (no colour) at :data:`TEXT_WIDTH` columns."""
    if isinstance(rendered, str):
        return rendered
    buf = io.StringIO()
    console = Console(file=buf, width=TEXT_WIDTH, color_system=None, force_terminal=False)
    for item in rendered:
        console.print(item)
    return buf.getvalue()
