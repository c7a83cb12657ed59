"""Guarding the files a command writes: one writer per output, a full disk as one line, inputs left alone.

* :func:`output_lock` holds ``OUT.lock`` while a command writes ``OUT``: a second
  command writing the same output at once is refused with a clear message
  instead of deleting or interleaving the first one's rows. The lock is a POSIX
  record lock, released by the kernel when the process ends however it ends, and
  not inherited by forked DataLoader workers (a worker outliving a killed parent
  would otherwise refuse the rerun that should resume).
* The lock file also holds a few MiB of the output's disk in reserve
  (:class:`SpaceReserve`). HDF5 cannot survive a full disk: once one of its writes
  fails, closing the file fails too and the process segfaults at exit. Releasing
  the reserve at the first failed write lets it close the file cleanly, with every
  committed row intact.
* :func:`disk_full` tells a full disk (or quota) apart from other failures, also
  when HDF5 reports it only in its message text.
* :func:`special_kind` names what a path is when it is neither a regular file nor a
  folder (a device, a FIFO, a socket): an atomic write would replace such a node with
  a regular file (as root, ``/dev/null`` itself), so writers refuse it or write through it.
* :func:`looks_like_hdf5` recognises a feature file (or any HDF5 file) without
  importing h5py, so that commands writing text or JSON can refuse to write over one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

from base.errors import UserError

try:  # POSIX; elsewhere outputs are not locked (as HDF5 does where a filesystem has no locks)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

FULL_ERRNOS = tuple(e for e in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if e is not None)
# HDF5 raises RuntimeError/OSError whose text carries the C errno and strerror, not an errno attribute.
_FULL_TEXTS = tuple(f"errno = {e}," for e in FULL_ERRNOS) + tuple(os.strerror(e) for e in FULL_ERRNOS)
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# Enough for HDF5 to flush its chunk caches (1 MiB per dataset at most, of which
# only one commit's rows are dirty) and its metadata when closing after a failed write.
DEFAULT_RESERVE_BYTES = 4 << 20


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says that the disk (or the user's quota) is full."""
    if isinstance(exc, OSError) and exc.errno in FULL_ERRNOS:
        return True
    text = str(exc)
    return any(t in text for t in _FULL_TEXTS)


def no_space_message(path: Path | str) -> str:
    return f"{path}: no space left on the device (its disk or quota is full)"


class DiskFull(UserError):
    """A write failed because the disk or quota is full; the message names the file."""


class SpaceReserve:
    """Bytes kept in a file on the output's filesystem, handed back with :meth:`release`."""

    def __init__(self, fd: int | None, path: Path) -> None:
        self.fd = fd
        self.path = path
        self.held = 0

    def fill(self, nbytes: int) -> None:
        if self.fd is None or nbytes <= 0:
            return
        try:
            # Random bytes, not zeros: a compressing filesystem would not store zeros.
            os.pwrite(self.fd, os.urandom(nbytes), 0)
        except OSError as exc:
            os.ftruncate(self.fd, 0)
            if disk_full(exc):
                raise UserError(f"{no_space_message(self.path.parent)}: not even {nbytes >> 20} MiB are free "
                                "to start writing; free some space") from exc
            raise
        self.held = nbytes

    def release(self) -> None:
        """Give the reserved space back to the filesystem (for a writer that hit a full disk)."""
        if self.fd is not None and self.held:
            os.ftruncate(self.fd, 0)
            self.held = 0


_HELD: dict[str, SpaceReserve] = {}  # lock path -> reserve: the lock is reentrant within a process


def lock_path(target: Path) -> Path:
    return target.with_name(target.name + ".lock")


@contextlib.contextmanager
def output_lock(target: str | os.PathLike[str], busy: str) -> Iterator[SpaceReserve]:
    """Hold ``TARGET.lock`` (created beside ``target``, removed at the end) while ``target`` is written.

    ``busy`` is the UserError message when another process holds it. Yields the
    lock file's :class:`SpaceReserve`, empty until the writer fills it. Reentrant in
    one process: an inner call yields the outer call's reserve. The folder must exist.
    """
    lock = lock_path(Path(target))
    key = os.path.abspath(lock)
    if key in _HELD:
        yield _HELD[key]
        return
    fd = _acquire(lock, busy)
    reserve = SpaceReserve(fd, lock)
    _HELD[key] = reserve
    try:
        yield reserve
    finally:
        del _HELD[key]
        if fd is not None:
            # Unlinked while still held: a process that opened the old file meanwhile
            # sees it is gone (see _acquire) and takes a fresh one.
            with contextlib.suppress(OSError):
                lock.unlink()
            os.close(fd)


def _acquire(lock: Path, busy: str) -> int | None:
    if fcntl is None:
        return None
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            if disk_full(exc):
                raise UserError(f"{no_space_message(lock.parent)}; free some space") from exc
            raise UserError(f"{lock}: cannot be created ({exc.strerror}); check the folder's permissions") from exc
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                raise UserError(busy) from None
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                return None  # a filesystem without locks: write unlocked, as HDF5 does there
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder finished and removed it between our open and our lock: again


_SPECIAL = ((stat.S_ISCHR, "a character device"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
            (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
#: what a path is when it names one of this command's own open descriptors (/dev/stdout,
#: /dev/fd/N, /proc/self/fd/N): written through that descriptor, whatever it refers to
DESCRIPTOR = "an open descriptor of this command"
#: the kinds of node a text output may be written through (a stream: /dev/null, a pipe, /dev/stdout)
STREAMS = ("a character device", "a FIFO (named pipe)", DESCRIPTOR)
_STANDARD = {"/dev/stdin": 0, "/dev/stdout": 1, "/dev/stderr": 2}
_FD_PATH = re.compile(r"/(?:dev/fd|proc/self/fd|proc/thread-self/fd|proc/(\d+)/fd)/(\d+)")


def descriptor_of(path: str | os.PathLike[str]) -> int | None:
    """The open descriptor of this process that ``path`` names, directly or through links
    (``/dev/stdout``, ``/dev/fd/N``, ``/proc/self/fd/N``), else None.

    Such a path resolves to whatever the descriptor refers to, often a regular file the
    shell opened (``> log.txt``, ``>> log.txt``): renaming a new file over it would replace
    that file and lose what the shell had written there, and reopening it would truncate
    it. Written through the descriptor instead, the output lands where the shell meant."""
    p = os.path.abspath(os.fspath(path))
    for _ in range(40):  # the kernel's own limit on a chain of links
        m = _FD_PATH.fullmatch(p)
        if p in _STANDARD or (m and (m[1] is None or int(m[1]) == os.getpid())):
            fd = _STANDARD[p] if p in _STANDARD else int(m[2])  # type: ignore[index]
            try:
                os.fstat(fd)
            except OSError:
                return None
            return fd
        try:
            link = os.readlink(p)
        except (OSError, ValueError):
            return None
        p = os.path.normpath(os.path.join(os.path.dirname(p), link))
    return None


def special_kind(path: str | os.PathLike[str]) -> str | None:
    """What ``path`` is (through links) when it exists and is neither a regular file nor
    a folder: ``a character device``, ``a FIFO (named pipe)``, ``a block device`` or
    ``a socket``, or :data:`DESCRIPTOR` when it names an open descriptor of this command;
    None otherwise (also when it does not exist)."""
    if descriptor_of(path) is not None:
        return DESCRIPTOR
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    return next((name for test, name in _SPECIAL if test(mode)), None)


def link_target(path: str | os.PathLike[str]) -> Path:
    """The file an atomic write to ``path`` replaces: the one a symbolic link names (the link
    stays), else ``path``. A special node's path is kept as given: its writer refuses it or
    writes through it (the link /dev/stdout names whatever file the shell opened)."""
    p = Path(path)
    return Path(os.path.realpath(p)) if p.is_symlink() and special_kind(p) is None else p


def looks_like_hdf5(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an HDF5 file: its signature at offset 0, 512, 1024, 2048, ... (after a user block)."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            offset = 0
            while offset + len(HDF5_SIGNATURE) <= size:
                fh.seek(offset)
                if fh.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
                    return True
                offset = 512 if offset == 0 else 2 * offset
    except OSError:
        return False
    return False


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether two paths name one file (through links too); False when either does not exist."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
