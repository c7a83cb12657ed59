"""Atomic writes: a result is either the old good file or the new good file.

Each write is flushed to the disk (the file, then its folder) before it counts as
done, so that what a resumable command has finished survives a power loss, and a
full disk is one :class:`NoSpace` error naming the path, the old file intact.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from base.errors import UserError
from base.outputs import (
    STREAMS,
    DiskFull,
    descriptor_of,
    disk_full,
    link_target,
    no_space_message,
    special_kind,
)


class NoSpace(DiskFull):
    """The disk (or quota) ran out while writing ``path``; whatever was there is intact."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        state = "is as it was" if self.path.exists() else "was not created"
        super().__init__(f"{no_space_message(self.path)}; nothing was written ({self.path.name} {state}): free "
                         "some space and run the command again")


@contextlib.contextmanager
def no_space_names(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn a full disk met while writing ``path`` into :class:`NoSpace`."""
    try:
        yield
    except OSError as exc:
        if disk_full(exc):
            raise NoSpace(path) from exc
        raise


def fsync_path(path: str | os.PathLike[str]) -> None:
    """Flush a file, or a folder's entries (a rename is durable only once its folder is)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_writable_dir(path: Path, what: str = "output") -> None:
    """Raise a UserError unless ``path`` is an existing, writable folder."""
    if not path.exists():
        raise UserError(f"{what} folder {path} does not exist; create it or choose another path")
    if not path.is_dir():
        raise UserError(f"{what} folder {path} is not a folder")
    if not os.access(path, os.W_OK):
        raise UserError(f"{what} folder {path} is not writable; choose another path")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; flush it and rename it over ``path`` on success.

    On an exception (including KeyboardInterrupt) the temporary file is removed
    and ``path`` is left exactly as it was; a full disk is :class:`NoSpace`. Only a
    regular file (or nothing) is replaced: a device, FIFO or socket at ``path`` is a
    UserError (the rename would put a regular file in its place), and a symbolic link
    is followed, so that the link stays and the file it names is replaced.
    """
    target = Path(path)
    kind = special_kind(target)
    if kind is not None:
        raise UserError(f"{target}: is {kind}, and probe writes only over regular files: move it away or choose "
                        "another path")
    target = link_target(target)
    folder = target.parent if str(target.parent) else Path(".")
    check_writable_dir(folder)
    with no_space_names(target):
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        with no_space_names(target):
            yield tmp_path
            # mkstemp creates 0600 files; give results the permissions any new file gets.
            os.chmod(tmp_path, 0o666 & ~_umask())
            fsync_path(tmp_path)
            os.replace(tmp_path, target)
            fsync_path(folder)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_output_text(path: str | os.PathLike[str], text: str) -> None:
    """Write a file the user named: atomically over a regular file or nothing; straight
    through a character device or a FIFO (``/dev/null``, ``/dev/stdout``, a named pipe,
    the ``/dev/fd/N`` of a shell's ``>(...)``), which stay what they are; through the
    descriptor itself where the path names one of this command's (``/dev/stdout`` when
    stdout is a file: the file is appended to at the shell's offset, never replaced)."""
    if special_kind(path) not in STREAMS:
        write_text_atomic(path, text)
        return
    fd = descriptor_of(path)
    if fd is not None:  # through the descriptor itself: its offset and append mode are the shell's
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError, AttributeError):
                stream.flush()  # what the command printed before stays before
    try:
        with no_space_names(path), (open(os.dup(fd), "w", encoding="utf-8") if fd is not None
                                    else open(path, "w", encoding="utf-8")) as fh:
            fh.write(text)
    except NoSpace:
        raise
    except OSError as exc:
        raise UserError(f"{path}: cannot be written ({exc.strerror or exc})") from exc


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    write_text_atomic(path, json_text(obj, indent=2) + "\n")


def write_jsonl_atomic(path: str | os.PathLike[str], rows: list[dict[str, Any]]) -> None:
    write_text_atomic(path, "".join(json_text(r) + "\n" for r in rows))


#: the key under which a record lists the values that were NaN or infinite (written as null)
NONFINITE_KEY = "nonfinite"


def json_text(obj: Any, indent: int | None = None) -> str:
    """``obj`` as strict JSON, the one way probe writes JSON.

    JSON has no NaN or infinity (Python would write bare ``NaN``/``Infinity`` tokens, which
    strict parsers reject): each such number is written as null, and a record (a JSON
    object) lists the paths of those values (``history.loss.3``) under ``nonfinite``, so a
    null that stands for a number that was not finite is told apart from a missing one.
    numpy and torch values are written as plain numbers and lists, paths as text.
    """
    replaced: list[str] = []
    plain = _finite(obj, "", replaced)
    if replaced and isinstance(plain, dict):
        plain[NONFINITE_KEY] = [*plain.get(NONFINITE_KEY, []), *replaced]
    return json.dumps(plain, indent=indent, allow_nan=False)  # allow_nan=False: a guard, never met


def _finite(obj: Any, where: str, replaced: list[str]) -> Any:
    if isinstance(obj, float):
        if math.isfinite(obj):
            return obj
        replaced.append(where)
        return None
    if obj is None or isinstance(obj, (str, int)):
        return obj
    if isinstance(obj, dict):
        return {k: _finite(v, f"{where}.{k}" if where else str(k), replaced) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v, f"{where}.{i}" if where else str(i), replaced) for i, v in enumerate(obj)]
    return _finite(json_default(obj), where, replaced)


def json_default(obj: Any) -> Any:
    # numpy / torch scalars and arrays end up in results; store them as plain JSON.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
