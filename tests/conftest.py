"""Shared test helpers: run the CLI as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


def run_cli(*args: str | os.PathLike[str], cwd: Path | None = None, timeout: float = 300) -> CliResult:
    """Run `probe ARGS...` in a fresh interpreter (as the console script would)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "cli", *map(str, args)],
        capture_output=True, text=True, cwd=cwd or REPO, env=env, timeout=timeout,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def assert_user_error(res: CliResult, *fragments: str) -> None:
    """Exit code 2, one line on stderr containing every fragment, no traceback."""
    assert res.code == 2, (res.code, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    for frag in fragments:
        assert frag.lower() in lines[0].lower(), (frag, lines[0])


@pytest.fixture
def cli():
    return run_cli
