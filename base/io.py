"""Atomic writes: a result is either the old good file or the new good file."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from base.errors import UserError
from base.outputs import disk_full, no_space_message


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
    """Yield a temporary path beside ``path``; rename it over ``path`` on success.

    On an exception (including KeyboardInterrupt) the temporary file is removed
    and ``path`` is left exactly as it was.
    """
    target = Path(path)
    check_writable_dir(target.parent if str(target.parent) else Path("."))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        if disk_full(exc):
            raise _unwritten(target) from exc
        raise
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files; give results the permissions any new file gets.
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, target)
    except BaseException as exc:
        tmp_path.unlink(missing_ok=True)
        if isinstance(exc, OSError) and disk_full(exc):
            raise _unwritten(target) from exc
        raise


def _unwritten(target: Path) -> UserError:
    state = "is as it was" if target.exists() else "was not created"
    return UserError(f"{no_space_message(target)}; nothing was written ({target.name} {state}): free some space "
                     "and run the command again")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=json_default) + "\n")


def write_jsonl_atomic(path: str | os.PathLike[str], rows: list[dict[str, Any]]) -> None:
    text = "".join(json.dumps(r, default=json_default) + "\n" for r in rows)
    write_text_atomic(path, text)


def json_default(obj: Any) -> Any:
    # numpy / torch scalars and arrays end up in results; store them as plain JSON.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
