"""What code produced a file: the release and, in a git checkout, the commit."""

from __future__ import annotations

import functools
import hashlib
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


#: the source that decides a fit's numbers (reports and studies only read and launch)
_FIT_SOURCE = ("base", "features", "probe")
_NOT_FIT_SOURCE = ("probe/reports", "probe/study")


@functools.cache
def source_hash() -> str:
    """A hash of the Python source that decides a fit's numbers: an interrupted fit resumed,
    or a finished one reused, by other code would mix or pass off heads of another version
    (the release number alone does not change between commits)."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.blake2b(digest_size=16)
    for package in _FIT_SOURCE:
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if not rel.startswith(_NOT_FIT_SOURCE):
                h.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()
