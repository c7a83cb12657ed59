"""The one exception type for mistakes a user can fix.

The CLI catches :class:`UserError` and prints its message on one line with
exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (a path, a file, a flag), not with probe.

    The message must name the file, row or flag and say what to do.
    """

    exit_code = 2
