"""What code produced a file: the release and, in a git checkout, the commit."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

from base import __version__


@functools.cache
def git_commit() -> str | None:
    """The commit of probe's source tree, when it is a git checkout (else None)."""
    try:
        proc = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def code_version() -> dict[str, str | None]:
    """``{"probe_version", "git_commit"}`` for provenance records."""
    return {"probe_version": __version__, "git_commit": git_commit()}
