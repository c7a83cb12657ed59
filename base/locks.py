"""Advisory locks on lock files (``flock``), so two processes never write the same output.

``flock`` locks belong to an open file: a process killed in any way loses its lock
at once, so a lock file left by a killed process never blocks a rerun; a lock released
normally removes its file. On NFS, Linux maps ``flock``
onto the server's byte-range locks, which works across nodes where the mount
supports locking (the usual cluster setup).

Used for run folders and study jobs. Feature files use ``base.outputs.output_lock``
instead: a POSIX record lock, which forked DataLoader workers do not inherit (a
``flock`` they inherit would outlive a killed parent and refuse the resuming rerun).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from base.errors import UserError


@contextlib.contextmanager
def exclusive(path: str | os.PathLike[str], busy: str) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` for the block; a UserError with ``busy`` (and
    who holds it) when another process has it. The lock file exists only while held."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = _holder(path)
            raise UserError(busy + (f" (held by {holder})" if holder else "")) from None
        # The holder before us may have removed the file between our open and our lock:
        # then ours is a lock on nothing, and we try again on the file now there.
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        with contextlib.suppress(OSError):  # who holds it, for another's message; a full disk may refuse
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # while still held: whoever opens it next makes a new one
        os.close(fd)


def _holder(path: str | os.PathLike[str]) -> str:
    try:
        return Path(path).read_text(errors="replace").strip()
    except OSError:
        return ""


def is_locked(path: str | os.PathLike[str]) -> bool:
    """Whether some process holds the lock on ``path`` now."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
