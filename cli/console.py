"""The one place that drives a rich console: the library renders, the CLI shows.

What a report format renders is text or rich renderables
(:data:`probe.reports.Rendered`); :func:`show` prints either on stdout and
:func:`as_text` lays either out as the text a file gets.

:func:`guarded_stdout` stands between every command and stdout: a stdout that cannot
take the output (a full device, a closed descriptor, an I/O error) never stops a
command half-way (`probe fit` finishes and writes its run); the first failure is
kept, and :mod:`cli.main` reports it in one line with exit code :data:`STDOUT_LOST`
once the command is done.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from rich.console import Console, RenderableType
from rich.text import Text

from cli.flags import declared_help

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
        console.print(_as_flags(item))


def _as_flags(item: RenderableType) -> RenderableType:
    """A line of text whose library wording names parameters in backquotes (a diagnostic's
    advice), with each shown as its flag, as errors are."""
    if isinstance(item, Text) and "`" in item.plain:
        return Text(declared_help(item.plain), style=item.style)
    return item


def as_text(rendered: str | Iterable[RenderableType]) -> str:
    """Text as it is; renderables as plain text (no colour) at :data:`TEXT_WIDTH` columns."""
    if isinstance(rendered, str):
        return rendered
    buf = io.StringIO()
    console = Console(file=buf, width=TEXT_WIDTH, color_system=None, force_terminal=False)
    for item in rendered:
        console.print(item)
    return buf.getvalue()


#: the exit code of a command that finished but could not write its output to stdout
#: (sysexits' EX_IOERR); 2 stays the code of a mistake
STDOUT_LOST = 74


class GuardedStdout:
    """``sys.stdout`` while a command runs: writes go to the real stdout until one fails;
    that failure is kept (:attr:`failure`) and later output is dropped."""

    def __init__(self, stream: TextIO | None) -> None:
        self._closed = stream is None
        self._stream: Any = stream if stream is not None else open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115
        self.failure: OSError | None = None

    def write(self, text: str) -> int:
        if not isinstance(text, str):  # as a text stream does: click probes with write(b"") for a binary one
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if text and self.failure is None:
            try:
                if self._closed:
                    raise OSError(errno.EBADF, "stdout is closed")
                return self._stream.write(text)
            except OSError as exc:
                self._lose(exc)
        return len(text)

    def flush(self) -> None:
        if self.failure is None and not self._closed:
            try:
                self._stream.flush()
            except OSError as exc:
                self._lose(exc)

    def _lose(self, exc: OSError) -> None:
        self.failure = exc
        # What the real stream still buffers then drains into /dev/null at exit, rather than
        # failing again there with a traceback Python prints itself.
        _park_stdout_fd()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def lost(self) -> str | None:
        """One line on what was lost, or None (nothing lost; or the reader of a pipe went
        away, as with `| head`, which is no error)."""
        exc = self.failure
        if exc is None or isinstance(exc, BrokenPipeError):
            return None
        why = "stdout is closed" if exc.errno == errno.EBADF else f"stdout could not be written ({exc.strerror or exc})"
        return (f"{why}: the output printed there is lost, though the command itself finished (the files it wrote "
                "are complete); send stdout to a terminal, a file or a pipe")


def _park_stdout_fd() -> None:
    """Put /dev/null on file descriptor 1."""
    fd = os.open(os.devnull, os.O_WRONLY)
    if fd != 1:
        os.dup2(fd, 1)
        os.close(fd)


def _stdout_fd_open() -> bool:
    try:
        os.fstat(1)
    except OSError:
        return False
    return True


@contextlib.contextmanager
def guarded_stdout() -> Iterator[GuardedStdout]:
    """Install :class:`GuardedStdout` as ``sys.stdout`` for the block (restored after).

    A closed file descriptor 1 (``>&-``) gets /dev/null: otherwise the next file the
    command opened would become descriptor 1, and the stdout of any program it starts."""
    previous = sys.stdout
    closed = not _stdout_fd_open()
    if closed:
        _park_stdout_fd()
    guard = GuardedStdout(None if closed or previous is None else previous)
    sys.stdout = guard  # type: ignore[assignment]
    try:
        yield guard
    finally:
        guard.flush()
        sys.stdout = previous
