"""Progress bars and consoles for the library's callbacks (:mod:`base.progress`).

rich is imported when a bar or console is made, not when the command line is
built, so that ``probe --help`` stays quick.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cli.flags import flag_names


class RichProgress:
    """A :class:`base.progress.Progress` drawn as a rich progress bar."""

    def __init__(self, console: Any, columns: Sequence[Any]) -> None:
        from rich.progress import Progress

        self._bar = Progress(*columns, console=console)
        self._task: Any = None

    def start(self, description: str, total: int, completed: int = 0) -> None:
        self._bar.start()
        self._task = self._bar.add_task(description, total=total, completed=completed)

    def advance(self, n: int) -> None:
        self._bar.advance(self._task, n)

    def finish(self) -> None:
        self._bar.stop()


def stderr_console(soft_wrap: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=soft_wrap)


def _count_columns() -> list[Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn

    return [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]


def count_bar(console: Any) -> RichProgress:
    """Description, bar and done/total."""
    return RichProgress(console, _count_columns())


def rows_bar(console: Any) -> RichProgress:
    """A :func:`count_bar` with the rate in rows/s, the time elapsed and the time left."""
    from rich.progress import ProgressColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:,.0f} rows/s" if speed else "? rows/s")

    return RichProgress(console, [*_count_columns(), RateColumn(), TimeElapsedColumn(), TimeRemainingColumn()])


def warner(console: Any, command: str) -> Any:
    """A ``warn`` callback: the message, with flags for parameters, in yellow-labelled lines.

    Warnings show even with --quiet; only progress and summaries are silenced.
    """

    def warn(message: str) -> None:
        console.print(f"[yellow]warning:[/yellow] {flag_names(message, [command])}", markup=True, highlight=False)

    return warn


class StepsBar:
    """The fit's progress object (``total(n)``, ``advance(n)``) as a rich bar that starts
    with its total and stops when the last step is in."""

    def __init__(self, console: Any, description: str) -> None:
        from rich.progress import (
            BarColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._bar = Progress(TextColumn("{task.description}"), BarColumn(),
                             TextColumn("{task.completed}/{task.total} steps"), TimeElapsedColumn(),
                             TimeRemainingColumn(), console=console, transient=True)
        self._task = self._bar.add_task(description, total=None)
        self._left = 0

    def total(self, n: int) -> None:
        self._left = n
        self._bar.update(self._task, total=n)
        if n:
            self._bar.start()

    def advance(self, n: int) -> None:
        self._bar.advance(self._task, n)
        self._left -= n
        if self._left <= 0:
            self._bar.stop()
