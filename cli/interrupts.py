"""SIGTERM (what Slurm, `timeout` and `kill` send) is handled like Ctrl-C, in every command.

Both raise KeyboardInterrupt in the main thread, so the library's one interrupt
path runs: `probe fit` writes the configurations already finished, `probe extract`
commits the batches already encoded, atomic writes remove their temporary files.
The command then prints one line and exits with 128 + the signal's number (130 for
Ctrl-C, 143 for SIGTERM), as a shell reports a process the signal stopped.
"""

from __future__ import annotations

import signal
from types import FrameType

HANDLED = (signal.SIGINT, signal.SIGTERM)
_received: list[int] = []


def handle_signals() -> None:
    """Turn SIGINT and SIGTERM into KeyboardInterrupt (a signal the parent set to be ignored stays ignored)."""
    for sig in HANDLED:
        current = signal.getsignal(sig)
        if current in (signal.SIG_DFL, signal.default_int_handler):
            signal.signal(sig, _interrupt)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)
    raise KeyboardInterrupt


def exit_code() -> int:
    """128 + the signal that interrupted the command (130 when none was seen: a KeyboardInterrupt raised by hand)."""
    return 128 + (_received[-1] if _received else signal.SIGINT)


def signal_name() -> str:
    """``SIGTERM`` or ``SIGINT``: what interrupted the command, for its message."""
    return signal.Signals(_received[-1] if _received else signal.SIGINT).name
