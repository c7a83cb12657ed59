"""Issue 26 (round three), items 4-7: where probe writes, and what happens when it cannot.

* Item 4: an output the user names that is a character device or a FIFO (``/dev/null``, a
  named pipe, the ``/dev/fd/N`` of a shell's ``>(...)``) is written through and stays what
  it is; a socket is refused; a feature file is never written over a device or a FIFO.
* Item 5: a stdout that cannot take the output (``> /dev/full``, ``>&-``) is one line and
  exit code 74 once the command has finished; `probe fit` still writes its whole run.
* Item 6: an output folder that cannot be created or is a file: one line.
* Item 7: ``--launcher slurm`` where Slurm is not installed: one line.

Every case runs the CLI in a fresh interpreter, as a user would, and checks that the nodes
and files the test made are as they were.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import IS_ROOT, REPO, CliResult, assert_user_error, run_cli
from tests.h5craft import write_feature_file
from tests.runfolders import two_runs
from tests.userfiles import snapshot

FAST = ["--method", "erm", "--steps", "20"]


def _cli(*args: str | os.PathLike[str], stdout: Any = subprocess.PIPE, env: dict[str, str] | None = None,
         **popen: Any) -> CliResult:
    """`probe ARGS` in a fresh interpreter with its stdout (and environment) chosen by the test."""
    proc = subprocess.run([sys.executable, "-m", "cli", *map(str, args)], stdout=stdout, stderr=subprocess.PIPE,
                          text=True, cwd=REPO, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})}, **popen)
    return CliResult(proc.returncode, proc.stdout or "", proc.stderr)


def _node(path: Path) -> tuple[int, int, int]:
    """What a node is: its type, inode and device number (a replaced node changes them)."""
    st = os.stat(path)
    return stat.S_IFMT(st.st_mode), st.st_ino, st.st_rdev


def _null_device(tmp_path: Path) -> Path:
    """A character device the test may write to: as root a null device of its own made with
    mknod (root could replace the system's); otherwise /dev/null, which only root could replace."""
    if not IS_ROOT:
        return Path("/dev/null")
    node = tmp_path / "null"
    try:
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except OSError as exc:
        pytest.skip(f"cannot make a device node here: {exc}")
    return node


@contextlib.contextmanager
def _reading(fifo: Path) -> Iterator[list[str]]:
    """Read everything written into ``fifo`` while the block runs (into the yielded list)."""
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()), daemon=True)
    reader.start()
    try:
        yield got
    finally:
        if reader.is_alive():  # no writer came: open it once, so that the reader returns
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(timeout=60)


# --------------------------------------------------------------------------- item 4


def test_report_out_writes_through_a_fifo_a_device_and_dev_fd_and_leaves_them_so(tmp_path: Path) -> None:
    run = two_runs(tmp_path)["a"]
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    node = _null_device(tmp_path)
    before = {p: _node(p) for p in (fifo, node)}
    with _reading(fifo) as got:
        res = run_cli("report", run, "--format", "markdown", "--out", fifo)
    assert res.code == 0, res.stderr
    assert got and got[0].startswith("# probe report") and "run_a" in got[0]
    res = run_cli("report", run, "--format", "markdown", "--out", node)
    assert res.code == 0, res.stderr
    assert {p: _node(p) for p in before} == before
    assert {p.name for p in tmp_path.iterdir()} <= {"pipe", "run_a", "run_b", "null"}  # no temporary file left

    # `--out >(...)`: the shell passes a pipe as /dev/fd/N
    r, w = os.pipe()
    with subprocess.Popen([sys.executable, "-m", "cli", "report", str(run), "--format", "csv", "--out",
                           f"/dev/fd/{w}"], pass_fds=(w,), cwd=REPO, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}) as proc:
        os.close(w)
        with os.fdopen(r) as pipe:
            text = pipe.read()
        err = proc.stderr.read() if proc.stderr else ""
    assert proc.returncode == 0, err
    assert "Traceback" not in err and text.startswith("label,method,run_dir")


def test_report_out_dev_stdout_on_a_file_appends_where_the_shell_points(tmp_path: Path) -> None:
    """``probe report RUN --out /dev/stdout >> log.txt``: /dev/stdout resolves to log.txt, which
    a rename would replace (losing what it held) and a reopen would truncate. The report is
    written through the descriptor itself, after what log.txt held; a feature file is never
    written to a descriptor."""
    run = two_runs(tmp_path)["a"]
    log = tmp_path / "log.txt"
    log.write_text("kept line\n")
    for out in ("/dev/stdout", "/dev/fd/1", "/proc/self/fd/1"):
        with open(log, "a") as fh:
            res = _cli("report", run, "--format", "csv", "--out", out, stdout=fh)
        assert res.code == 0 and "Traceback" not in res.stderr, res.stderr
    lines = log.read_text().splitlines()
    assert lines[0] == "kept line" and sum(ln.startswith("label,method,run_dir") for ln in lines) == 3, lines
    with open(log, "a") as fh:
        res = _cli("extract", "demo", "--out", "/dev/stdout", stdout=fh)
    assert_user_error(res, "--out", "open descriptor")
    assert log.read_text().splitlines() == lines


def test_report_out_refuses_a_socket(tmp_path: Path) -> None:
    run = two_runs(tmp_path)["a"]
    path = tmp_path / "sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        before = _node(path)
        assert_user_error(run_cli("report", run, "--out", path), "--out", "socket")
        assert _node(path) == before


@pytest.mark.slow
def test_feature_files_and_figures_are_never_written_over_a_device_or_a_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    node = _null_device(tmp_path)
    shard = write_feature_file(tmp_path / "s.h5")
    before = {p: _node(p) for p in (fifo, node)}
    files = snapshot(tmp_path)
    for target, kind in ((fifo, "FIFO"), (node, "character device")):
        assert_user_error(run_cli("merge", target, shard, "--overwrite", "--quiet"), str(target), kind)
    assert_user_error(run_cli("extract", "demo", "--out", fifo, "--quiet"), "--out", "FIFO")
    # a figure's file name taken by a FIFO in the --plots folder
    run = two_runs(tmp_path / "runs")["a"]
    plots = tmp_path / "plots"
    plots.mkdir()
    os.mkfifo(plots / "per_group_test_acc.png")
    res = run_cli("report", run, "--plots", plots)
    assert_user_error(res, "per_group_test_acc.png", "FIFO")
    assert stat.S_ISFIFO(os.stat(plots / "per_group_test_acc.png").st_mode)
    assert {p: _node(p) for p in before} == before
    assert {k: v for k, v in snapshot(tmp_path).items() if not k.startswith(("runs", "plots"))} == files


# --------------------------------------------------------------------------- item 5


def _assert_stdout_lost(res: CliResult, *fragments: str) -> None:
    assert res.code == 74, (res.code, res.stderr)
    assert "Traceback" not in res.stderr, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("probe: error: stdout"), res.stderr
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])


def _close_stdout() -> None:
    os.close(1)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_or_closed_stdout_is_one_line_and_the_fit_still_writes_its_run(tmp_path: Path) -> None:
    run = two_runs(tmp_path)["a"]
    h5 = write_feature_file(tmp_path / "s.h5")
    files = snapshot(tmp_path)
    with open("/dev/full", "w") as full:
        for args in (["report", run], ["report", run, "--format", "json"], ["info", h5]):
            _assert_stdout_lost(_cli(*args, stdout=full), "No space left")
        _assert_stdout_lost(_cli("fit", h5, *FAST, "--out", tmp_path / "full", stdout=full), "No space left")
    closed = {"stdout": subprocess.DEVNULL, "preexec_fn": _close_stdout}
    _assert_stdout_lost(_cli("report", run, "--format", "markdown", **closed), "closed")
    _assert_stdout_lost(_cli("fit", h5, *FAST, "--out", tmp_path / "closed", **closed), "closed")
    res = _cli("fit", h5, *FAST, "--out", tmp_path / "quiet", "--quiet", **closed)
    assert res.code == 0 and not res.stderr, res.stderr  # nothing to print: nothing lost
    import json

    for name in ("full", "closed", "quiet"):  # the runs are whole
        assert json.loads((tmp_path / name / "summary.json").read_text())["complete"] is True, name
        assert (tmp_path / name / "results.jsonl").read_text().count("\n") == 1
    assert {k: v for k, v in snapshot(tmp_path).items() if k in files} == files


# --------------------------------------------------------------------------- item 6


def test_fit_default_out_in_a_read_only_folder_is_one_line(permdir: tuple[Path, list[str]]) -> None:
    folder, prefix = permdir
    folder.chmod(0o555)
    before = snapshot(folder)
    res = run_cli("fit", "good.h5", *FAST, "--quiet", cwd=folder, prefix=prefix)
    assert_user_error(res, "runs/good", str(folder / "runs"), "--out")
    assert snapshot(folder) == before and not (folder / "runs").exists()


def test_study_and_reproduce_out_naming_a_file_is_one_line(tmp_path: Path) -> None:
    write_feature_file(tmp_path / "a.h5")
    taken = tmp_path / "taken"
    taken.write_text("the user's notes\n")
    toml = tmp_path / "s.toml"
    toml.write_text('[study]\nout = "taken"\n[fit]\nsteps = 20\n[[features]]\nfile = "a.h5"\n'
                    '[[methods]]\nmethod = "erm"\n')
    before = snapshot(tmp_path)
    assert_user_error(run_cli("study", toml), "s.toml", str(taken), "is a file", "--out")
    assert_user_error(run_cli("study", toml, "--out", tmp_path / "a.h5"), "a.h5", "is a file")
    assert_user_error(run_cli("reproduce", "--demo", "--out", taken), "--out", str(taken), "is a file")
    assert snapshot(tmp_path) == before


# --------------------------------------------------------------------------- item 7


def test_slurm_launcher_without_slurm_is_one_line(tmp_path: Path) -> None:
    write_feature_file(tmp_path / "a.h5")
    toml = tmp_path / "s.toml"
    toml.write_text('[fit]\nsteps = 20\n[[features]]\nfile = "a.h5"\n[[methods]]\nmethod = "erm"\n')
    empty = tmp_path / "bin"  # a PATH with no sbatch on it: this machine without Slurm
    empty.mkdir()
    before = snapshot(tmp_path)
    res = _cli("study", toml, "--launcher", "slurm", env={"PATH": str(empty)})
    assert_user_error(res, "Slurm", "sbatch", "--launcher local")
    assert snapshot(tmp_path) == before and not (tmp_path / "s.study").exists()
