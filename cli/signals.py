"""SIGTERM (what Slurm, `timeout` and `kill` send) handled like Ctrl-C.

A command that stops cleanly on Ctrl-C (KeyboardInterrupt) does the same on
SIGTERM, and the exit code still tells the two apart: 130 for SIGINT, 143 for
SIGTERM (128 + the signal's number, as a shell reports a process killed by it).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from typing import Any


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where KeyboardInterrupt would be, so the same cleanup runs."""


def exit_code(exc: BaseException) -> int:
    return 128 + signal.SIGTERM if isinstance(exc, Terminated) else 130


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    def stop(signum: int, frame: Any) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
