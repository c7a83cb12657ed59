"""The names of what a run folder holds, and whether a new run is being moved in: what
readers need without the writers' imports (torch and safetensors, which cost a second at
the start of `probe report`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: the resume journal of an unfinished fit, and the lock a fit holds
JOURNAL = ".partial"
LOCK = ".lock"


def swapping(out: Path) -> bool:
    """Whether a new run is being moved into ``out`` (its files are then a mixture)."""
    return (out / JOURNAL / "staging" / "READY").exists()

#: the files of a run besides its heads (heads/<method>.safetensors)
RUN_FILES = ("results.jsonl", "summary.json")
#: the folder of the heads
HEADS = "heads"
#: the inferred domain of every training row, written when the fit inferred them
DOMAINS_FILE = "domains.csv"


def named_files(summary: Any) -> tuple[str, ...]:
    """The head files and the domains file a summary.json names: the only ones of them a
    new run may replace or remove."""
    if not isinstance(summary, dict):
        return ()
    methods = summary.get("methods") if isinstance(summary.get("methods"), dict) else {}
    heads = [e.get("head") for e in methods.values() if isinstance(e, dict)]
    named = [h for h in heads if isinstance(h, str) and h.startswith(f"{HEADS}/") and "/" not in h[len(HEADS) + 1:]]
    domains = summary.get("domains") if isinstance(summary.get("domains"), dict) else {}
    return tuple(named + ([DOMAINS_FILE] if domains.get("file") == DOMAINS_FILE else []))
