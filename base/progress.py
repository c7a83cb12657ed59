"""How long-running library calls report progress and messages without printing.

Library code never prints (only ``cli`` does): it takes a :class:`Progress` and
plain ``Callable[[str], None]`` callbacks for warnings and notes, and the command
line supplies a progress bar and a console. Called from Python, the defaults
report nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

# A message for the user, e.g. a warning or a note. Names of parameters are in
# backquotes, as in UserError messages, so the command line can show its flags.
Notify = Callable[[str], None]


class Progress(Protocol):
    """One task's progress: started once, advanced as work is done, finished at the end.

    ``finish`` is called however the task ends (also on an exception), so a
    display can be taken down.
    """

    def start(self, description: str, total: int, completed: int = 0) -> None: ...

    def advance(self, n: int) -> None: ...

    def finish(self) -> None: ...


class NoProgress:
    """A :class:`Progress` that reports nothing."""

    def start(self, description: str, total: int, completed: int = 0) -> None:
        pass

    def advance(self, n: int) -> None:
        pass

    def finish(self) -> None:
        pass


def ignore(message: str) -> None:
    """A :data:`Notify` that drops the message."""
