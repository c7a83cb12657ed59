"""Shared test helpers: run the CLI as a user would."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _threads_per_worker() -> None:
    """Under pytest-xdist (`make test` runs ``-n auto``), each worker and every command it
    starts gets its share of the cores as BLAS/OpenMP threads, unless the caller set them.

    Two workers on two cores, each with torch's default of a thread per core, make four
    spinning OpenMP threads on two cores: the same tests then take two to four times as
    long (measured on test_trainer.py, whose heads are tiny). Set before torch or numpy
    is imported (this module is loaded first); subprocesses inherit it through the
    environment, as the study launcher's jobs do (probe.study.launch.slots)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers < 1:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, str(max(1, cores // workers)))


_threads_per_worker()


def _deliver_sigint() -> None:
    """A test run started in the background by a non-interactive shell (``make test &``,
    ``nohup``, a CI step run that way) inherits SIGINT ignored, and the commands the tests
    start would keep ignoring it, as `probe` rightly does for a user's own ``nohup probe
    fit``: the Ctrl-C tests would then wait on a fit that never stops. Each test process
    takes SIGINT back, so the commands it starts receive it."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


_deliver_sigint()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist, tests marked ``slow`` run first: handed out last, one of them
    would keep a worker busy while the others have nothing left (every worker sorts
    alike, as xdist requires). Tests marked ``cuda`` are skipped where CUDA is not
    available: one marker both selects them (``pytest -m cuda``, benchmarks/gpu_check.sh)
    and keeps them off CPU machines."""
    if hasattr(config, "workerinput"):
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: else as collected
    if not any(item.get_closest_marker("cuda") for item in items):
        return
    import torch  # only when a cuda test was collected: most runs need not load it here

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(skip)


def built_once(factory: pytest.TempPathFactory, name: str, build: Callable[[Path], object]) -> Path:
    """A folder that ``build(folder)`` fills once per test run, shared by every test and, under
    pytest-xdist, by every worker (the first to ask builds it while the others wait). Tests
    read it; a test that changes a file copies it first."""
    root = factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # above each worker's own basetemp: the whole run's
    shared = root / "built-once"
    shared.mkdir(exist_ok=True)
    done = shared / name
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not done.exists():
            work = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=shared))
            build(work)
            work.rename(done)
    return done


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


def run_cli(*args: str | os.PathLike[str], cwd: Path | None = None, timeout: float = 300,
            prefix: list[str] | None = None) -> CliResult:
    """Run `probe ARGS...` in a fresh interpreter (as the console script would);
    ``prefix`` (e.g. ``unprivileged_prefix()``) goes before the interpreter."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [*(prefix or []), sys.executable, "-m", "cli", *map(str, args)],
        capture_output=True, text=True, cwd=cwd or REPO, env=env, timeout=timeout,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def kept_chunks(run: Path) -> list[Path]:
    """The chunks of heads a `probe fit` into ``run`` has kept so far (its journal)."""
    folder = run / ".partial" / "chunks"
    return [p for p in folder.iterdir() if not p.name.startswith(".")] if folder.is_dir() else []


def wait_for_chunks(proc: subprocess.Popen, run: Path, n: int, timeout: float = 240) -> None:
    """Until the fit ``proc`` (into ``run``) has kept ``n`` chunks; fails if it ends first."""
    deadline = time.time() + timeout
    while len(kept_chunks(run)) < n:
        assert proc.poll() is None, f"the fit ended before {n} chunks were kept: {proc.communicate()}"
        assert time.time() < deadline, "no chunk was finished in time (a very slow machine?)"
        time.sleep(0.02)


IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
NOBODY = 65534


@functools.cache
def unprivileged_prefix() -> list[str] | None:
    """A command prefix under which file permissions apply to the CLI.

    Root reads and writes whatever the permissions say, so as root the CLI runs as
    the user `nobody` through setpriv; [] when not root; None when that cannot be
    arranged here (no setpriv, or `nobody` cannot run this interpreter, or is not
    actually refused a file it has no permission for).
    """
    if not IS_ROOT:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    prefix = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)
        locked = Path(tmp) / "locked"
        locked.write_text("x")
        locked.chmod(0)
        # Everything the CLI imports must load for `nobody`; only then may the file be refused.
        probe = f"import cli.main, features.store, probe.api; print('imported', flush=True); open({str(locked)!r})"
        try:
            proc = subprocess.run([*prefix, sys.executable, "-c", probe], capture_output=True, text=True,
                                  cwd=tmp, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
        except (OSError, subprocess.SubprocessError):
            return None
    refused = proc.returncode != 0 and "PermissionError" in proc.stderr
    return prefix if "imported" in proc.stdout and refused else None


def open_folder(prefix: str = "probe-perm-") -> Path:
    """A temporary folder that `nobody` can enter and read (pytest's tmp_path is root-only)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    folder.chmod(0o755)
    return folder


@contextlib.contextmanager
def small_tmpfs(tmp_path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (``16m``) mounted under ``tmp_path`` for a full-disk test (root only,
    else the test is skipped), unmounted afterwards."""
    if not IS_ROOT:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True,
                         text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def permdir() -> Iterator[tuple[Path, list[str]]]:
    """A folder with a good feature file (good.h5), and the prefix under which permissions
    apply to the CLI (as root: run it as `nobody`); skipped where that cannot be arranged."""
    from tests.h5craft import write_feature_file

    prefix = unprivileged_prefix()
    if prefix is None:
        pytest.skip("running as root and cannot run the CLI as an unprivileged user here")
    folder = open_folder()
    try:
        write_feature_file(folder / "good.h5").chmod(0o644)
        yield folder, prefix
    finally:
        shutil.rmtree(folder, ignore_errors=True)


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
