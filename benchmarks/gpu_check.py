"""The GPU check (issue 29): every CUDA path of probe, run once on one GPU in under 8 minutes.

Steps, in the order they run:

  cuda_tests   ``pytest -m cuda``: the tests that run only with CUDA (moments, solver,
               third order, metrics on the device, extraction with worker processes, the
               label-free heads AFR, JTT and CB-LLR against the CPU)
  cpu_equal    a small grid (ERM, CMA 2 x 2 x 2 anneal, GroupDRO) fitted in float32 on the
               device and on the CPU: the selected configurations, every row's test metrics
               and every head compared; the CPU's float64 fit of the same grid gives the scale
               of float32 rounding next to the tolerance
  extraction   open_clip ViT-B-32 with random weights at batch 256: forward passes over a
               prepared batch after warm-up, then JPEGs -> HDF5 end to end with the default
               workers
  waterbirds   the whole cma-paper protocol (5 rows, their grids, 5 seeds, 3,000 steps) on
               Waterbirds-sized synthetic features, timed whole
  celeba       the same at CelebA size (162,770 training rows, 16,300 steps); last, because it
               is the longest and takes what is left of the budget

Every step records its wall seconds, its peak GPU memory (``torch.cuda.max_memory_allocated``,
reset before the step) and pass/fail, and has a time cap: a step that reaches it is stopped
and recorded as ``timeout`` with how far it got, and the next step runs. The results are
rewritten after every step (a step that is running is written as ``unfinished`` first, so a
process killed from outside still leaves a true record).

    bash benchmarks/gpu_check.sh                  # on a CUDA machine: benchmarks/results/gpu_check.{json,md}
    python -m benchmarks.gpu_check --dry-run --device cpu --out /tmp/gpu_dry
                                                  # every step's code, tiny sizes, on a CPU
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import torch

from base.device import resolve_device
from base.errors import UserError
from benchmarks._common import RESULTS_DIR, write_results

REPO = Path(__file__).resolve().parents[1]
NAME = "gpu_check"
#: the script's own deadline from its start; the wrapper's hard guard is 20 s later and the
#: issue's limit is 480 s (8 minutes), so writing the results after a late step still fits
BUDGET_S = 450.0
#: below this, a step is not started: it could not do anything useful
MIN_STEP_S = 5.0

#: the comparison grid (step cpu_equal): every kind of fitter, the closed-form solver (ERM),
#: a penalised trainer (CMA) and a reweighting one (GroupDRO)
EQUAL_METHODS = ["erm", "cma", "groupdro"]
EQUAL_GRID: dict[str, list[Any]] = {"alpha": [1e2, 1e3], "beta": [10.0, 100.0]}
#: largest |theta_device - theta_cpu| over the row's max |theta_cpu| accepted. On these fits
#: float32 rounding moves a head by at most ~2e-5 of its scale (measured on the CPU: inputs
#: perturbed by one ulp, and float32 against float64); 1e-3 is fifty times that, and far below
#: what a wrong kernel (a missed term, a transposed matrix) moves.
THETA_REL_TOL = 1e-3
#: test cross-entropies (means over thousands of rows) may differ by rounding only
CE_REL_TOL = 1e-3


@dataclass(frozen=True)
class Sizes:
    """How big each step is: the real check, or the dry run's tiny version of it."""

    all_tests: bool  # pytest over all of tests/ (the real check) or the files that use the marker
    equal_fraction: float
    equal_steps: int
    protocol_fraction: dict[str, float]
    protocol_dim: int
    protocol_grid: dict[str, list[Any]]
    protocol_settings: dict[str, Any]
    encoder: str  # an open_clip architecture
    encoder_config: dict[str, Any] | None  # registered with open_clip first (the dry run's tiny model)
    images: int
    batch: int
    warmup: int
    timed: int


FULL = Sizes(all_tests=True, equal_fraction=0.2, equal_steps=200,
             protocol_fraction={"waterbirds": 1.0, "celeba": 1.0}, protocol_dim=768, protocol_grid={},
             protocol_settings={}, encoder="ViT-B-32", encoder_config=None, images=1024, batch=256, warmup=2,
             timed=10)
#: the dry run's stand-in for ViT-B-32: the same open_clip code path (a ViT and a text tower,
#: random weights), a model that builds and runs in a fraction of a second on a CPU
TINY_VIT = {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16},
            "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
# A few hundred rows, one seed and three steps: the same calls, in seconds on a CPU.
DRY = Sizes(all_tests=False, equal_fraction=0.05, equal_steps=20,
            protocol_fraction={"waterbirds": 0.05, "celeba": 0.002}, protocol_dim=128,
            protocol_grid={"seed": [0]}, protocol_settings={"steps": 3}, encoder="gpu-check-tiny-vit",
            encoder_config=TINY_VIT, images=8, batch=4, warmup=1, timed=2)


@dataclass
class Context:
    device: torch.device
    sizes: Sizes
    dry_run: bool
    deadline: float  # time.monotonic() at which the budget ends


@dataclass(frozen=True)
class Step:
    name: str
    what: str
    run: Callable[[Context, dict[str, Any]], tuple[bool, str]]
    cap_s: float | None  # None: what is left of the budget

    def cap(self, ctx: Context) -> float:
        left = ctx.deadline - time.monotonic()
        return left if self.cap_s is None else min(self.cap_s, left)

    def what_now(self, ctx: Context) -> str:
        return self.what.replace("ViT-B-32", ctx.sizes.encoder).replace("batch 256", f"batch {ctx.sizes.batch}")


class StepTimeout(KeyboardInterrupt):
    """Raised by a step's alarm. A KeyboardInterrupt because that is what the code under
    test already stops on cleanly (pytest ends its session and reports, fit_grid drops the
    unfinished chunk) and what no ``except Exception`` in it swallows."""


# ------------------------------------------------------------------ memory and time


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> tuple[float | None, float | None]:
    """(max allocated, max reserved) since the last reset, in MiB; None off CUDA."""
    if device.type != "cuda":
        return None, None
    return (torch.cuda.max_memory_allocated(device) / 2**20, torch.cuda.max_memory_reserved(device) / 2**20)


@dataclass
class Alarm:
    """SIGALRM after ``seconds``; ``expired`` says whether it fired (pytest catches the
    interrupt itself and returns, so the exception alone does not tell)."""

    seconds: float
    expired: bool = False
    _old: Any = field(default=None, repr=False)

    def __enter__(self) -> Alarm:
        def fire(signum: int, frame: FrameType | None) -> None:
            self.expired = True
            raise StepTimeout(f"time cap of {self.seconds:.0f} s reached")

        self._old = signal.signal(signal.SIGALRM, fire)
        signal.setitimer(signal.ITIMER_REAL, max(self.seconds, 1e-3))
        return self

    def __exit__(self, *exc: object) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self._old)


def run_step(step: Step, ctx: Context) -> dict[str, Any]:
    """One step under its cap: its row of the results (``details`` keeps what the step
    recorded, also when it was stopped)."""
    cap = step.cap(ctx)
    row: dict[str, Any] = {"step": step.name, "what": step.what_now(ctx), "cap_s": round(cap, 1), "details": {}}
    if ctx.deadline - time.monotonic() < MIN_STEP_S:
        return {**row, "status": "skipped", "seconds": 0.0, "result": f"not started: {cap:.0f} s of the budget left"}
    details: dict[str, Any] = row["details"]
    reset_peak(ctx.device)
    t0 = time.perf_counter()
    error = None
    with Alarm(cap) as alarm:
        try:
            ok, result = step.run(ctx, details)
            status = "pass" if ok else "fail"
        except KeyboardInterrupt:
            if not alarm.expired:
                raise  # a real Ctrl-C stops the whole check
            status, result = "timeout", ""
        except Exception as exc:  # recorded, and the next step runs: a first GPU run should show every failure
            status, result = "error", " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
            error = traceback.format_exc()
    if alarm.expired:
        done = details.get("progress")
        status, result = "timeout", (f"stopped at its {cap:.0f} s cap" + (f", after {done}" if done else "")
                                     + (f"; {result}" if result else ""))
    try:
        sync(ctx.device)
    except RuntimeError as exc:  # an asynchronous CUDA error surfaces here
        status, result = "error", f"CUDA error after the step: {' '.join(str(exc).split())[:200]}"
    allocated, reserved = peak_mib(ctx.device)
    row.update(status=status, seconds=round(time.perf_counter() - t0, 2), peak_gpu_mib=allocated,
               peak_gpu_reserved_mib=reserved, result=result)
    if error:
        row["traceback"] = error
    reset_peak(ctx.device)  # frees what the step cached, so the next step's peak is its own
    return row


# ---------------------------------------------------------------- step 1: CUDA tests


class Outcomes:
    """A pytest plugin counting outcomes: a test's call phase gives passed/failed/skipped;
    setup and teardown count when they skip (the marker's skip) or fail (an error)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.failures: list[str] = []

    def pytest_runtest_logreport(self, report: Any) -> None:
        if report.when == "call":
            self.counts[report.outcome] += 1
        elif report.skipped:
            self.counts["skipped"] += 1
        elif report.failed:
            self.counts["error"] += 1
        else:
            return
        if report.failed:
            self.failures.append(f"{report.nodeid} ({report.when}): {str(report.longrepr).splitlines()[-1][:200]}")

    def pytest_collectreport(self, report: Any) -> None:
        if report.failed:
            self.counts["error"] += 1
            self.failures.append(f"{report.nodeid} (collection)")

    def pytest_deselected(self, items: list[Any]) -> None:
        self.counts["deselected"] += len(items)


def marked_files() -> list[Path]:
    """Test files that use the ``cuda`` marker (the dry run collects only these, to stay quick)."""
    return sorted(p for p in (REPO / "tests").glob("test_*.py") if "mark.cuda" in p.read_text(encoding="utf-8"))


def step_cuda_tests(ctx: Context, details: dict[str, Any]) -> tuple[bool, str]:
    import pytest

    paths = [REPO / "tests"] if ctx.sizes.all_tests else marked_files()
    args = ["-m", "cuda", "-p", "no:cacheprovider", "-q", "-rfEs", *map(str, paths)]
    details["command"] = "pytest " + " ".join(str(Path(a).relative_to(REPO)) if a.startswith(str(REPO)) else a
                                              for a in args)
    plugin = Outcomes()
    code = int(pytest.main(args, plugins=[plugin]))
    counts = {k: plugin.counts.get(k, 0) for k in ("passed", "failed", "skipped", "error", "deselected")}
    details.update(exit_code=code, **counts, failures=plugin.failures[:20])
    ok = code == 0 and counts["failed"] == counts["error"] == 0
    if ctx.device.type == "cuda":  # with CUDA nothing may be skipped, and something must have run
        ok = ok and counts["passed"] > 0 and counts["skipped"] == 0
    result = (f"{counts['passed']} passed, {counts['failed']} failed, {counts['error']} errors, "
              f"{counts['skipped']} skipped ({counts['deselected']} deselected)")
    if plugin.failures:
        result += "; first: " + plugin.failures[0]
    return ok, result


# ------------------------------------------------------- step 2: CUDA equals the CPU


def flat_metrics(m: dict[str, Any] | None, prefix: str = "") -> dict[str, Any]:
    """A split's metrics as {"per_group/landbird/land/acc": value, ...}."""
    out: dict[str, Any] = {}
    for k, v in (m or {}).items():
        if isinstance(v, dict):
            out.update(flat_metrics(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def smallest_group(rows: list[Any], split: str) -> int:
    """The fewest rows of a group of ``split`` (a prediction that flips moves its accuracy by 1/n)."""
    sizes = [g["n"] for r in rows for g in ((r.split(split) or {}).get("per_group") or {}).values() if g.get("n")]
    return min(sizes, default=1)


def theta_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| over max |b|: a head's difference on the scale of the head."""
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def compare_grids(dev: dict[str, list[Any]], cpu: dict[str, list[Any]],
                  ref64: dict[str, list[Any]] | None = None) -> dict[str, Any]:
    """Rows fitted on the device against the same rows on the CPU (both float32), method by
    method: the selected configuration (by validation WGA), every row's test metrics and
    head. Accuracies may differ by one flipped prediction in the smallest test group (a
    row on the decision boundary can fall either way under rounding), cross-entropies by
    CE_REL_TOL, heads by THETA_REL_TOL; selections must agree unless the two configurations
    tie within one validation prediction on both devices. ``ref64`` (the CPU in float64)
    gives the float32 rounding scale for the record."""
    from probe.runs.selection import select

    out: dict[str, Any] = {"methods": {}, "ok": True}
    for method, cpu_rows in cpu.items():
        dev_by = {r.run_id: r for r in dev.get(method, [])}
        ref_by = {r.run_id: r for r in (ref64 or {}).get(method, [])}
        acc_tol = 1.0 / smallest_group(cpu_rows, "test") + 1e-12
        worst = {"theta_rel": 0.0, "acc_abs": 0.0, "ce_rel": 0.0, "float32_vs_float64": 0.0}
        where: dict[str, str] = {}
        problems: list[str] = []
        if set(dev_by) != {r.run_id for r in cpu_rows}:
            problems.append(f"rows differ: {sorted(dev_by)} vs {sorted(r.run_id for r in cpu_rows)}")
        for r in cpu_rows:
            d = dev_by.get(r.run_id)
            if d is None:
                continue
            if d.status != r.status:
                problems.append(f"{r.run_id} status {d.status} vs {r.status}")
            diffs = {"theta_rel": theta_rel(d.theta, r.theta)}
            if r.run_id in ref_by:
                diffs["float32_vs_float64"] = theta_rel(r.theta, ref_by[r.run_id].theta)
            fd, fc = flat_metrics(d.split("test")), flat_metrics(r.split("test"))
            if set(fd) != set(fc):
                problems.append(f"{r.run_id} test metrics differ in their keys")
            for key in fd.keys() & fc.keys():
                x, y = fd[key], fc[key]
                if x is None or y is None or key.endswith("/n") or key == "n":
                    if x != y:
                        problems.append(f"{r.run_id} test {key}: {x} vs {y}")
                elif key.endswith("ce"):
                    diffs["ce_rel"] = max(diffs.get("ce_rel", 0.0), abs(x - y) / max(abs(y), 1e-30))
                else:
                    diffs["acc_abs"] = max(diffs.get("acc_abs", 0.0), abs(x - y))
            for k, v in diffs.items():
                if v > worst[k]:
                    worst[k], where[k] = v, r.run_id
        for k, tol in (("theta_rel", THETA_REL_TOL), ("acc_abs", acc_tol), ("ce_rel", CE_REL_TOL)):
            if worst[k] > tol:
                problems.append(f"{k} {worst[k]:.3g} > {tol:.3g} ({where[k]})")
        if worst["theta_rel"] > THETA_REL_TOL and where["theta_rel"] in ref_by:
            # said beside the failure, not excused by it: a head that float32 itself moves
            # this far is one whose optimiser amplifies rounding (Adam on near-zero gradients)
            rid = where["theta_rel"]
            own = theta_rel(next(r for r in cpu_rows if r.run_id == rid).theta, ref_by[rid].theta)
            problems.append(f"{rid}: float32 against float64 on the CPU moves it by {own:.3g}")
        selection = _compare_selection(select, dev.get(method, []), cpu_rows)
        if not selection["ok"]:
            problems.append(selection["note"])
        out["methods"][method] = {"rows": len(cpu_rows), "largest": worst, "at": where,
                                  "tolerance": {"theta_rel": THETA_REL_TOL, "acc_abs": acc_tol,
                                                "ce_rel": CE_REL_TOL},
                                  "selection": selection, "problems": problems}
        out["ok"] = out["ok"] and not problems
    return out


def _compare_selection(select: Callable[..., Any], dev_rows: list[Any], cpu_rows: list[Any]) -> dict[str, Any]:
    chosen_dev, chosen_cpu = select(dev_rows), select(cpu_rows)
    key_dev = chosen_dev[0].config_key if chosen_dev else None
    key_cpu = chosen_cpu[0].config_key if chosen_cpu else None
    res: dict[str, Any] = {"device": key_dev, "cpu": key_cpu, "equal": key_dev == key_cpu, "ok": key_dev == key_cpu,
                           "note": "same configuration selected"}
    if key_dev != key_cpu and key_dev is not None and key_cpu is not None:
        tol = 1.0 / smallest_group(cpu_rows, "val") + 1e-12

        def gap(rows: list[Any]) -> float:
            score = {r.config_key: (r.split("val") or {}).get("wga") for r in rows}
            a, b = score.get(key_dev), score.get(key_cpu)
            return math.inf if a is None or b is None else abs(a - b)

        near = gap(dev_rows) <= tol and gap(cpu_rows) <= tol
        res.update(ok=near, note=("a near tie: the two configurations are within one validation prediction "
                                  "on both devices" if near else
                                  f"different configurations selected: {key_dev} (device) vs {key_cpu} (CPU)"))
    return res


def step_cpu_equal(ctx: Context, details: dict[str, Any]) -> tuple[bool, str]:
    from benchmarks.paper_grid import synthetic
    from probe.api import fit_grid

    fs = synthetic("waterbirds", fraction=ctx.sizes.equal_fraction, dim=128)
    details.update(rows=len(fs.y), methods=EQUAL_METHODS, grid=EQUAL_GRID, steps=ctx.sizes.equal_steps)

    def fit(name: str, device: str, dtype: str) -> dict[str, list[Any]]:
        t0 = time.perf_counter()
        rows = fit_grid(fs, EQUAL_METHODS, EQUAL_GRID, None, steps=ctx.sizes.equal_steps, device=device,
                        dtype=dtype)["rows"]
        sync(torch.device(device))
        details[f"fit_{name}_s"] = round(time.perf_counter() - t0, 2)
        return rows

    dev = fit("device_float32", str(ctx.device), "float32")
    cpu = fit("cpu_float32", "cpu", "float32")
    ref = fit("cpu_float64", "cpu", "float64")
    cmp = compare_grids(dev, cpu, ref)
    details["comparison"] = cmp
    worst = {k: max(m["largest"][k] for m in cmp["methods"].values())
             for k in ("theta_rel", "acc_abs", "ce_rel", "float32_vs_float64")}
    details["largest"] = worst
    same = "the same device: trivially equal; " if ctx.device.type == "cpu" else ""
    problems = [p for m in cmp["methods"].values() for p in m["problems"]]
    result = (f"{same}{sum(m['rows'] for m in cmp['methods'].values())} rows; largest head difference "
              f"{worst['theta_rel']:.2g} of its scale (tolerance {THETA_REL_TOL:g}; float32 vs float64 on the "
              f"CPU: {worst['float32_vs_float64']:.2g}), test accuracy {worst['acc_abs']:.2g}, test CE "
              f"{worst['ce_rel']:.2g} relative; selections "
              + ("equal" if all(m["selection"]["equal"] for m in cmp["methods"].values()) else "differ")
              + (f"; {problems[0]}" if problems else ""))
    return cmp["ok"], result


# ------------------------------------------------------- step 3: the protocols whole


class Progress:
    """fit_grid's progress hook: how far a protocol got, kept in the step's details."""

    def __init__(self, details: dict[str, Any]) -> None:
        self.details, self.n, self.done, self.t0 = details, 0, 0, time.perf_counter()

    def total(self, n: int) -> None:
        self.n = n

    def advance(self, n: int) -> None:
        self.done += n
        self.details["progress"] = (f"{self.done / max(self.n, 1):.0%} of its {self.n} steps x chunks in "
                                    f"{time.perf_counter() - self.t0:.0f} s")


def cpu_reference(scale: str) -> dict[str, Any] | None:
    """The whole protocol's time on the CPU, where benchmarks/paper_grid.py measured it
    whole (``paper_grid_<scale>_full.json``), for the record beside the GPU's."""
    import json

    path = RESULTS_DIR / f"paper_grid_{scale}_full.json"
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for r in obj.get("rows", []):
        if r.get("side") == "probe (batched)" and r.get("extrapolated") is False:
            m = obj.get("machine", {})
            return {"seconds": r.get("full_s"), "file": path.name, "machine": f"{m.get('cpu')}, {m.get('cores')} cores"}
    return None


def protocol_step(scale: str) -> Callable[[Context, dict[str, Any]], tuple[bool, str]]:
    def run(ctx: Context, details: dict[str, Any]) -> tuple[bool, str]:
        from benchmarks.paper_grid import synthetic
        from probe.api import fit_grid
        from probe.runs.selection import select

        t0 = time.perf_counter()
        fs = synthetic(scale, fraction=ctx.sizes.protocol_fraction[scale], dim=ctx.sizes.protocol_dim)
        details.update(data_s=round(time.perf_counter() - t0, 2), shape=list(fs.features.shape),
                       train_rows=int((fs.split == 0).sum()))
        t0 = time.perf_counter()
        res = fit_grid(fs, None, ctx.sizes.protocol_grid, None, protocol="cma-paper", device=str(ctx.device),
                       progress=Progress(details), notify=lambda line: details.__setitem__("protocol", line),
                       **ctx.sizes.protocol_settings)
        sync(ctx.device)
        fit_s = time.perf_counter() - t0
        rows = res["rows"]
        statuses = Counter(r.status for rs in rows.values() for r in rs)
        chosen = {m: select(rs) for m, rs in rows.items()}
        details.update(fit_s=round(fit_s, 2), heads={m: len(rs) for m, rs in rows.items()},
                       statuses=dict(statuses),
                       selected_test_wga={m: (c[0].split("test") or {}).get("wga") if c else None
                                          for m, c in chosen.items()})
        ref = cpu_reference(scale) if not ctx.dry_run else None
        details["cpu_reference"] = ref
        heads = sum(details["heads"].values())
        result = f"{heads} heads fitted whole in {fit_s:.1f} s ({dict(statuses)})"
        if ref and ref.get("seconds"):
            result += f"; CPU, whole: {ref['seconds']:.0f} s ({ref['machine']})"
        # Pass: the protocol finished with every row; the statuses are recorded, not judged
        # (a large penalty weight may diverge on any device).
        return all(c is not None for c in chosen.values()) and heads > 0, result

    return run


# ---------------------------------------------------------------- step 4: extraction


def step_extraction(ctx: Context, details: dict[str, Any]) -> tuple[bool, str]:
    import numpy as np

    from benchmarks.extract import extract_rate, forward_rate, make_jpegs, spec_for
    from features.encoders import load_encoder
    from features.loading import default_workers
    from features.store import read_features

    sz = ctx.sizes
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        if sz.encoder_config is not None:
            import json

            import open_clip

            config = Path(tmp) / f"{sz.encoder}.json"
            config.write_text(json.dumps(sz.encoder_config), encoding="utf-8")
            open_clip.add_model_config(config)
        enc = load_encoder(f"open_clip:{sz.encoder}", weights="none", device=str(ctx.device))
        details.update(encoder=f"open_clip:{sz.encoder} (random weights)", precision=enc.precision,
                       batch=sz.batch, load_s=round(time.perf_counter() - t0, 2))
        t0 = time.perf_counter()
        paths = make_jpegs(Path(tmp), sz.images)  # real photo crops as JPEGs: what a dataset holds
        details["jpegs_s"] = round(time.perf_counter() - t0, 2)
        batch = enc.collate([enc.prepare(p) for p in paths[:sz.batch]])
        forward_rate(enc, [batch] * sz.warmup, sz.warmup * sz.batch)  # kernels chosen, allocator filled
        rate = forward_rate(enc, [batch] * sz.timed, sz.timed * sz.batch)
        details.update(forward_img_s=round(rate, 1), forward_images=sz.timed * sz.batch,
                       forward_peak_gpu_mib=peak_mib(ctx.device)[0])
        workers = default_workers(ctx.device.type)
        out = Path(tmp) / "features.h5"
        e2e = extract_rate(enc, spec_for(paths), out, sz.batch, workers)
        fs = read_features(out)
        finite = bool(np.isfinite(fs.features).all())
        details.update(extract_img_s=round(e2e, 1), extract_images=len(paths), workers=workers,
                       rows_written=len(fs.y), finite=finite)
    ok = finite and len(fs.y) == len(paths) and rate > 0
    return ok, (f"{enc.name} forward {rate:.0f} img/s over {sz.timed} batches of {sz.batch} ({enc.precision}); "
                f"JPEGs to HDF5 {e2e:.0f} img/s ({len(paths)} images, {workers} workers, start-up included)"
                + ("" if finite else "; NON-FINITE features"))


STEPS = [
    Step("cuda_tests", "pytest -m cuda", step_cuda_tests, 60.0),
    Step("cpu_equal", "a float32 grid on the device equals the CPU's", step_cpu_equal, 60.0),
    Step("extraction", "ViT-B-32 (random weights) throughput, batch 256", step_extraction, 60.0),
    Step("waterbirds", "cma-paper protocol, Waterbirds size, whole", protocol_step("waterbirds"), 150.0),
    Step("celeba", "cma-paper protocol, CelebA size, whole", protocol_step("celeba"), None),
]


# --------------------------------------------------------------------------- results


def device_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"device": str(device), "torch": torch.__version__, "cuda_runtime": torch.version.cuda,
                            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
                            "float32_matmul_precision": torch.get_float32_matmul_precision(),
                            "NVIDIA_TF32_OVERRIDE": os.environ.get("NVIDIA_TF32_OVERRIDE")}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    compute_capability=f"{props.major}.{props.minor}", cudnn=torch.backends.cudnn.version())
        try:  # the driver is not visible through torch
            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=20).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            info["driver"] = None
    return info


COLUMNS = ["step", "status", "seconds", "cap_s", "peak_gpu_mib", "result"]


def write(rows: list[dict[str, Any]], extra: dict[str, Any], out: Path) -> tuple[Path, Path]:
    title = ("GPU check: the CUDA tests, a grid on CUDA against the CPU's, the CMA paper's protocols whole, "
             "extraction throughput")
    return write_results(NAME, rows, COLUMNS, extra=extra, title=title, out_dir=out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default) or cuda:N; cpu only with --dry-run")
    ap.add_argument("--dry-run", action="store_true",
                    help="tiny sizes (a few hundred rows, three steps, batch 4): checks every step's code")
    ap.add_argument("--out", type=Path, default=None,
                    help="results folder (default benchmarks/results; a new temporary folder with --dry-run)")
    ap.add_argument("--steps", default=",".join(s.name for s in STEPS),
                    help="comma-separated steps to run, from: " + ", ".join(s.name for s in STEPS))
    ap.add_argument("--budget", type=float, default=BUDGET_S, help=f"seconds for all steps (default {BUDGET_S:g})")
    return ap.parse_args(argv)


def check_args(args: argparse.Namespace) -> tuple[torch.device, list[Step], Path]:
    """The device, the steps and the results folder, or a UserError (one line)."""
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"CUDA is not available here (torch {torch.__version__}, built for CUDA "
                        f"{torch.version.cuda or 'none'}): this check needs a GPU; --dry-run --device cpu "
                        "checks its code on a CPU")
    device = resolve_device(args.device)
    if device.type == "cpu" and not args.dry_run:
        raise UserError("--device cpu runs only with --dry-run: the check's full sizes take hours on a CPU")
    names = [s for s in args.steps.split(",") if s]
    unknown = sorted(set(names) - {s.name for s in STEPS})
    if unknown or not names:
        raise UserError(f"--steps {args.steps!r}: choose from {', '.join(s.name for s in STEPS)}")
    out = args.out if args.out is not None else (Path(tempfile.mkdtemp(prefix="gpu_check_dry_")) if args.dry_run
                                                  else RESULTS_DIR)
    if args.dry_run and out.resolve() == RESULTS_DIR.resolve():
        raise UserError(f"--dry-run writes elsewhere than {RESULTS_DIR}: its tiny sizes are not results")
    return device, [s for s in STEPS if s.name in names], out


def main(argv: list[str] | None = None) -> int:
    start = time.monotonic()
    args = parse_args(argv)
    try:
        device, steps, out = check_args(args)
    except UserError as exc:
        print(f"gpu_check: {exc}", file=sys.stderr)
        return 2
    ctx = Context(device, DRY if args.dry_run else FULL, args.dry_run, start + args.budget)
    if args.dry_run and device.type == "cpu":
        # Tiny sizes gain nothing from intra-op threads, and on a busy machine (the test
        # suite's) threads that wait on each other make the dry run several times slower.
        torch.set_num_threads(1)
    command = os.environ.get("GPU_CHECK_COMMAND") or " ".join(
        ["python -m benchmarks.gpu_check", *(sys.argv[1:] if argv is None else argv)])
    extra: dict[str, Any] = {"command": command, "dry_run": args.dry_run, **device_info(device),
                             "budget_s": args.budget,
                             "note": "peak_gpu_mib: torch.cuda.max_memory_allocated, reset before each step "
                                     "(tensors; peak_gpu_reserved_mib in the JSON adds the caching allocator's "
                                     "slack); seconds: the step's whole wall time (data, models and reference "
                                     "fits included; the protocols' fit alone is fit_s in the JSON)"}
    rows: list[dict[str, Any]] = [{"step": s.name, "what": s.what_now(ctx), "status": "not run"} for s in steps]
    for i, step in enumerate(steps):
        # Written before the step starts: if the process is killed from outside, this stays.
        rows[i] = {**rows[i], "status": "unfinished", "result": "the process ended while this step ran"}
        write(rows, {**extra, "total_s": round(time.monotonic() - start, 1)}, out)
        print(f"[gpu_check] {step.name}: {step.what_now(ctx)} (cap {step.cap(ctx):.0f} s)", flush=True)
        rows[i] = run_step(step, ctx)
        print(f"[gpu_check] {step.name}: {rows[i]['status']} in {rows[i]['seconds']} s, peak "
              f"{rows[i].get('peak_gpu_mib') or 0:.0f} MiB: {rows[i]['result']}", flush=True)
    passed = all(r["status"] == "pass" for r in rows)
    jpath, mpath = write(rows, {**extra, "total_s": round(time.monotonic() - start, 1), "passed": passed}, out)
    print(f"[gpu_check] {'all steps passed' if passed else 'NOT all steps passed'}; wrote {jpath} and {mpath}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
