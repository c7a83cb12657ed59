"""Shared by the benchmark scripts: describe the machine and write JSON + Markdown results."""

from __future__ import annotations

import json
import os
import platform
import resource
import time
from pathlib import Path
from typing import Any

import torch

from features.loading import trim_heap

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
    }
    return info


def rss_kb(field: str = "VmRSS") -> int | None:
    """A memory field of /proc/self/status in KiB (None where there is no /proc)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakRSS:
    """Peak resident memory above the resident memory at entry, in bytes.

    Linux: the baseline is VmRSS at entry and the peak VmHWM at exit, after
    resetting VmHWM through /proc/self/clear_refs. Elsewhere ru_maxrss's growth,
    a lower bound (an earlier, higher peak hides part of it); ``note`` says which.
    """

    def __enter__(self) -> PeakRSS:
        trim_heap()
        self.base_kb = rss_kb("VmRSS")
        self.exact = self.base_kb is not None and _reset_peak_rss()
        if not self.exact:
            self.base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return self

    def __exit__(self, *exc: object) -> None:
        peak_kb = rss_kb("VmHWM") if self.exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.bytes = max(0, (peak_kb or 0) - (self.base_kb or 0)) * 1024
        self.note = "peak RSS - baseline RSS" if self.exact else "ru_maxrss delta (lower bound)"


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def timed(fn, repeat: int = 3, warmup: int = 1) -> float:
    """Best wall time of ``repeat`` calls after ``warmup`` calls (seconds)."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeat):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def write_results(name: str, rows: list[dict[str, Any]], columns: list[str], extra: dict[str, Any] | None = None,
                  title: str | None = None, out_dir: Path | None = None) -> tuple[Path, Path]:
    """Write ``results/<name>.json`` and ``results/<name>.md`` (a table of ``columns``);
    ``out_dir`` instead of ``results/`` keeps trial runs (dry runs, tests) out of it."""
    out_dir = RESULTS_DIR if out_dir is None else Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(),
               "rows": rows, **(extra or {})}
    jpath = out_dir / f"{name}.json"
    jpath.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    m = payload["machine"]
    lines = [f"# {title or name}", "",
             f"Machine: {m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads), "
             f"torch {m['torch']}, CUDA: {m['cuda'] or 'none'}. Created {payload['created']}.", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |")
    for k, v in (extra or {}).items():
        if isinstance(v, (str, int, float, bool)):
            lines.append(f"\n{k}: {v}")
    mpath = out_dir / f"{name}.md"
    mpath.write_text("\n".join(lines) + "\n")
    return jpath, mpath


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)
