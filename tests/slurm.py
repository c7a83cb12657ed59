"""A real single-node Slurm for the tests: munged, slurmctld and slurmd (Debian's
``munge`` and ``slurm-wlm``), configured in a temporary folder, started as root and
stopped afterwards. Everything it writes is under that folder (its own munge key and
socket, spool, state and logs); only the installed programs are shared.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

PROGRAMS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "sinfo")


def _conf(root: Path, host: str, cpus: int) -> str:
    return f"""ClusterName=probetest
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={root}/munge.socket
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
KillWait=10
NodeName={host} CPUs={cpus} RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _stop(pid: int | None) -> None:
    if pid is None:
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)


def _start(root: Path, env: dict[str, str]) -> str | None:
    """Start the daemons; None when the node is up, else what failed."""
    run = {"capture_output": True, "text": True, "env": env, "timeout": 60}
    steps = [["mungekey", "--create", "--keyfile", str(root / "munge.key")],
             ["munged", "--force", "--key-file", str(root / "munge.key"), "--socket", str(root / "munge.socket"),
              "--pid-file", str(root / "munged.pid"), "--log-file", str(root / "munged.log"),
              "--seed-file", str(root / "munge.seed")],
             ["slurmctld", "-f", env["SLURM_CONF"]], ["slurmd", "-f", env["SLURM_CONF"]]]
    for cmd in steps:
        res = subprocess.run(cmd, **run)
        if res.returncode != 0:
            return f"{cmd[0]} failed: {(res.stderr or res.stdout).strip()[:300]}"
    deadline = time.time() + 60
    while time.time() < deadline:
        res = subprocess.run(["sinfo", "-h", "-o", "%T"], **run)
        if res.returncode == 0 and res.stdout.strip() in ("idle", "mixed", "allocated"):
            return None
        time.sleep(0.5)
    logs = " | ".join((root / f).read_text()[-300:] for f in ("slurmctld.log", "slurmd.log") if (root / f).exists())
    return f"the node did not come up: {logs}"


@pytest.fixture
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A running single-node Slurm; SLURM_CONF set for the test and its children."""
    if os.geteuid() != 0:
        pytest.skip("starting Slurm's daemons needs root")
    missing = [p for p in PROGRAMS if shutil.which(p) is None]
    if missing:
        pytest.skip(f"Slurm is not installed here (no {', '.join(missing)}; .ci/run installs slurm-wlm and munge)")
    root = Path(tmp_path_factory.mktemp("slurm"))
    for sub in ("state", "spool"):
        (root / sub).mkdir()
    (root / "slurm.conf").write_text(_conf(root, socket.gethostname().split(".")[0], os.cpu_count() or 1))
    env = {**os.environ, "SLURM_CONF": str(root / "slurm.conf")}
    try:
        failed = _start(root, env)
        if failed is not None:
            pytest.skip(f"slurmctld is unavailable here: {failed}")
        monkeypatch.setenv("SLURM_CONF", env["SLURM_CONF"])
        yield root
    finally:
        for name in ("slurmd.pid", "slurmctld.pid", "munged.pid"):
            _stop(_pid(root / name))
