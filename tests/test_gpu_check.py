"""benchmarks/gpu_check.py: its dry run on the CPU writes the results a GPU run would, its
comparison catches a head or a selection that moved, and a step is stopped at its cap."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_check as gc
from probe.records.results import Result, run_id
from tests.conftest import REPO

STEP_KEYS = {"step", "what", "status", "seconds", "cap_s", "peak_gpu_mib", "peak_gpu_reserved_mib", "result",
             "details"}


@pytest.mark.slow
def test_dry_run_writes_every_step(tmp_path: Path) -> None:
    out = tmp_path / "dry"
    env = {**{k: v for k, v in os.environ.items() if k != "GPU_CHECK_COMMAND"}, "PYTHONPATH": str(REPO),
           "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--dry-run", "--device", "cpu", "--out",
                           str(out)], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((out / "gpu_check.json").read_text())
    assert res["benchmark"] == "gpu_check" and res["dry_run"] is True and res["passed"] is True
    assert res["device"] == "cpu" and res["command"].startswith("python -m benchmarks.gpu_check --dry-run")
    assert {"torch", "cuda_runtime", "budget_s", "total_s", "machine"} <= set(res)
    rows = {r["step"]: r for r in res["rows"]}
    assert list(rows) == [s.name for s in gc.STEPS]
    for r in rows.values():
        assert STEP_KEYS <= set(r), r["step"]
        assert r["status"] == "pass" and r["seconds"] > 0 and r["peak_gpu_mib"] is None  # no GPU memory on a CPU
    tests = rows["cuda_tests"]["details"]
    assert tests["failed"] == tests["error"] == 0 and tests["skipped"] >= 6  # every CUDA test, skipped here
    equal = rows["cpu_equal"]["details"]
    assert set(equal["comparison"]["methods"]) == set(gc.EQUAL_METHODS)
    assert equal["largest"]["theta_rel"] == 0.0 and equal["largest"]["float32_vs_float64"] > 0
    ext = rows["extraction"]["details"]
    assert ext["forward_img_s"] > 0 and ext["extract_img_s"] > 0 and ext["finite"] and ext["rows_written"] == 8
    for scale in ("waterbirds", "celeba"):
        d = rows[scale]["details"]
        assert set(d["heads"]) == {"erm", "fishr", "coral", "hgp", "cma"} and d["progress"].startswith("100%")
    md = (out / "gpu_check.md").read_text()
    assert md.startswith("# GPU check") and "| step | status | seconds | cap_s | peak_gpu_mib | result |" in md
    assert all(f"| {s.name} | pass |" in md for s in gc.STEPS) and "command: python -m benchmarks.gpu_check" in md


@pytest.mark.skipif(torch.cuda.is_available(), reason="here it would start the whole check")
def test_without_cuda_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert gc.main(["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "CUDA is not available" in err
    assert gc.main(["--device", "cpu", "--out", str(tmp_path)]) == 2
    assert "only with --dry-run" in capsys.readouterr().err
    assert gc.main(["--dry-run", "--device", "cpu", "--out", str(gc.RESULTS_DIR)]) == 2
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------- the caps


def _ctx(budget: float = 60.0) -> gc.Context:
    return gc.Context(torch.device("cpu"), gc.DRY, True, time.monotonic() + budget)


def test_a_step_is_stopped_at_its_cap_and_keeps_what_it_recorded() -> None:
    def slow(ctx: gc.Context, details: dict) -> tuple[bool, str]:
        details["progress"] = "40% of its 10 steps x chunks in 0 s"
        time.sleep(5)
        return True, "finished"

    t0 = time.monotonic()
    row = gc.run_step(gc.Step("slow", "sleeps", slow, 0.2), _ctx())
    assert time.monotonic() - t0 < 3
    assert row["status"] == "timeout"
    assert row["result"] == "stopped at its 0 s cap, after 40% of its 10 steps x chunks in 0 s"


def test_an_interrupt_swallowed_by_the_step_still_counts_as_timeout() -> None:
    # pytest.main catches KeyboardInterrupt and returns: the alarm itself must tell.
    def swallows(ctx: gc.Context, details: dict) -> tuple[bool, str]:
        try:
            time.sleep(5)
        except KeyboardInterrupt:
            pass
        return False, "interrupted"

    row = gc.run_step(gc.Step("swallows", "", swallows, 0.2), _ctx())
    assert row["status"] == "timeout" and row["result"].endswith("interrupted")


def test_an_error_is_recorded_and_an_exhausted_budget_skips() -> None:
    def boom(ctx: gc.Context, details: dict) -> tuple[bool, str]:
        raise RuntimeError("CUDA error: an illegal memory access\nwas encountered")

    row = gc.run_step(gc.Step("boom", "", boom, 10.0), _ctx())
    assert row["status"] == "error"
    assert row["result"] == "RuntimeError: CUDA error: an illegal memory access was encountered"
    assert "Traceback" in row["traceback"]
    row = gc.run_step(gc.Step("late", "", boom, None), _ctx(budget=1.0))
    assert row["status"] == "skipped"


# ------------------------------------------------------------------- the comparison


def _rows(seed: int = 0) -> dict[str, list[Result]]:
    """Two configurations of one method, with test and validation metrics of 10-row groups."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for i, (val_wga, test_acc) in enumerate(((0.6, 0.7), (0.5, 0.8))):
        split = {"acc": test_acc, "wga": 0.5, "ce": 0.6,
                 "per_group": {"g0": {"acc": test_acc, "n": 10}, "g1": {"acc": 0.5, "n": 10}}}
        rows.append(Result(method="cma", hparams={"alpha": float(i), "seed": 0}, run_id=run_id("cma", i),
                           metrics={"test": split, "val": {**copy.deepcopy(split), "wga": val_wga}},
                           theta=torch.randn(2, 5, generator=gen)))
    return {"cma": rows}


def test_identical_grids_compare_equal() -> None:
    cmp = gc.compare_grids(_rows(), _rows(), _rows())
    m = cmp["methods"]["cma"]
    assert cmp["ok"] and m["problems"] == [] and m["selection"]["equal"]
    assert m["largest"] == {"theta_rel": 0.0, "acc_abs": 0.0, "ce_rel": 0.0, "float32_vs_float64": 0.0}


def test_a_moved_head_a_flipped_metric_and_another_selection_are_caught() -> None:
    dev = _rows()
    dev["cma"][1].theta = dev["cma"][1].theta * (1 + 2 * gc.THETA_REL_TOL)
    cmp = gc.compare_grids(dev, _rows())
    assert not cmp["ok"] and cmp["methods"]["cma"]["at"]["theta_rel"] == "cma-0001"
    # one prediction of a 10-row group (0.1) is rounding; two are not
    dev = _rows()
    dev["cma"][0].metrics["test"]["per_group"]["g0"]["acc"] += 0.1
    assert gc.compare_grids(dev, _rows())["ok"]
    dev["cma"][0].metrics["test"]["per_group"]["g0"]["acc"] += 0.1
    assert not gc.compare_grids(dev, _rows())["ok"]
    # a selection that moves by more than one validation prediction
    dev = _rows()
    dev["cma"][1].metrics["val"]["wga"] = 0.9
    sel = gc.compare_grids(dev, _rows())["methods"]["cma"]["selection"]
    assert not sel["ok"] and not sel["equal"]
    # a near tie: within one prediction of 10 validation rows on both devices
    cpu = _rows()
    cpu["cma"][1].metrics["val"]["wga"] = 0.59
    dev = _rows()
    dev["cma"][1].metrics["val"]["wga"] = 0.61
    sel = gc.compare_grids(dev, cpu)["methods"]["cma"]["selection"]
    assert not sel["equal"] and sel["ok"] and "near tie" in sel["note"]
