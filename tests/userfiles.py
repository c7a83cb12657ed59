"""What a user had before a command ran: every file under a folder, to compare with afterwards."""

from __future__ import annotations

import hashlib
from pathlib import Path


def snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``folder``."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def previous_run(folder: Path) -> Path:
    """``folder/run`` holding a previous run (its files' content is the user's), to be left
    exactly as it was by a command that refuses; returns ``folder``."""
    prev = folder / "run"
    prev.mkdir()
    (prev / "results.jsonl").write_text('{"previous": true}\n')
    (prev / "summary.json").write_text('{"previous": true}\n')
    return folder
