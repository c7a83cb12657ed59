"""The one exception type for mistakes a user can fix.

The CLI catches :class:`UserError` and prints its message on one line with
exit code 2; anything else is a bug and keeps its traceback.

A message names the parameter at fault in backquotes, as the Python API spells
it (```batch_size`: must be at least 1``); the command line shows each such name
that is one of its flags as that flag (``--batch-size: must be at least 1``).
"""

from __future__ import annotations

from collections.abc import Iterable


class UserError(Exception):
    """A problem with the user's input (a path, a file, a parameter), not with probe.

    The message must name the file, row or parameter and say what to do.
    """

    exit_code = 2


def either(choices: Iterable[str]) -> str:
    """``a, b or c``: how messages and help list the values to choose from."""
    items = list(choices)
    return " or ".join(filter(None, [", ".join(items[:-1]), items[-1]])) if items else ""
