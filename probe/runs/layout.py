"""The names of what a run folder holds, and whether a new run is being moved in: what
readers need without the writers' imports (torch and safetensors, which cost a second at
the start of `probe report`)."""

from __future__ import annotations

from pathlib import Path

#: the resume journal of an unfinished fit, and the lock a fit holds
JOURNAL = ".partial"
LOCK = ".lock"


def swapping(out: Path) -> bool:
    """Whether a new run is being moved into ``out`` (its files are then a mixture)."""
    return (out / JOURNAL / "staging" / "READY").exists()
