"""Time and peak memory of the exact CMA Hessian penalty (value + backward) against
the direct Kronecker form and a 100-probe Hutchinson estimate, and the cost of a
grid of 64 heads against one head.

    .venv/bin/python -m benchmarks.penalties            # full size (N=512, d=768)
    .venv/bin/python -m benchmarks.penalties --quick    # reduced size, a smoke run

Every variant runs in a fresh subprocess: it builds its data and runs one
warm-up call of value + backward; then one call gives the peak memory above the
baseline (CPU: peak RSS from /proc/self/status after resetting it through
/proc/self/clear_refs and trimming the heap, falling back to ru_maxrss; CUDA:
torch.cuda.max_memory_allocated), and further calls give the best wall time.

Variants (float32, theta requires grad, the backward reaches theta):
  auto          probe.moments.hessian_variance(method="auto"): logits + R_H + backward
  auto+S        the same with S = feature_kernel(X) precomputed outside the timing,
                as a full-batch trainer reuses it across steps
  kernel/binary/direct   the named method
  terms         probe.moments.penalty_terms: per-domain CE + R_g + R_H, one backward
                (what a CMA training step needs)
  erm           logits + mean CE + backward: the floor any head fit pays
  hutchinson    the HGP-style estimate of the per-domain Hessian *diagonals'*
                variance with 100 Rademacher probes, made as fast as is fair: one
                copy of theta per domain so each domain's Hessian-vector products come
                out separately, probes batched with torch.func.vmap over
                jvp(grad(loss)) (forward-over-reverse; measured faster here than
                autograd.grad(..., is_grads_batched=True)); no loop over probes.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from base.device import resolve_device  # noqa: E402
from benchmarks._common import PeakRSS, timed, write_results  # noqa: E402
from features.loading import trim_heap  # noqa: E402
from probe import moments  # noqa: E402

# Direct variants whose estimated peak exceeds this are skipped with a note.
DIRECT_LIMIT = 8 * 1024**3
COLUMNS = ["shape", "G", "variant", "method", "time_ms", "peak_mem_MB", "value", "note"]


def variants(quick: bool) -> list[dict]:
    N, K, d = (128, 4, 96) if quick else (512, 4, 768)
    G = 8 if quick else 64
    out = []
    for C in (2, 65):
        base = dict(N=N, K=K, d=d, C=C, G=1)
        names = ["auto", "auto+S", "kernel"] + (["binary"] if C == 2 else []) + ["direct", "terms", "erm",
                                                                                 "hutchinson"]
        out += [dict(base, variant=v) for v in names]
        out += [dict(base, G=G, variant=v) for v in ("auto", "auto+S", "terms", "erm")]
    return out


# ------------------------------------------------------------------------ one variant


def hutchinson_penalty(theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor, domains: torch.Tensor,
                       probes: int, gen: torch.Generator) -> torch.Tensor:
    """(1/K) Σ_e ‖D_e − D̄‖² with D_e = mean_k v_k ∘ (H_e v_k), Rademacher v_k."""
    from torch.func import grad, jvp, vmap

    Xt = moments.augment(X)
    _, inverse, counts = torch.unique(domains, return_inverse=True, return_counts=True)
    rows = torch.split(torch.argsort(inverse, stable=True), counts.tolist())
    K = len(rows)
    # Sorting rows by domain once keeps each domain's logits to its own rows.
    parts = [(Xt.index_select(0, r), y.index_select(0, r)) for r in rows]

    def total(thK: torch.Tensor) -> torch.Tensor:
        return sum(F.cross_entropy(Xe @ thK[e].T, ye) for e, (Xe, ye) in enumerate(parts))

    thK = theta.unsqueeze(0).repeat(K, 1, 1)  # one differentiable copy per domain
    V = torch.randint(0, 2, (probes, *thK.shape), generator=gen, device=theta.device).to(theta.dtype) * 2 - 1
    gfn = grad(total)
    Hv = vmap(lambda v: jvp(gfn, (thK,), (v,))[1])(V)
    D = (V * Hv).mean(0)
    return (D - D.mean(0)).pow(2).sum() / K


def run_variant(spec: dict, device: torch.device, repeat: int, probes: int) -> dict:
    warnings.filterwarnings("ignore", category=FutureWarning)
    N, K, d, C, G, name = (spec[k] for k in ("N", "K", "d", "C", "G", "variant"))
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(N, d, generator=gen).to(device)
    y = torch.randint(0, C, (N,), generator=gen).to(device)
    dom = torch.randint(0, K, (N,), generator=gen).to(device)
    shape = (C, d + 1) if G == 1 else (G, C, d + 1)
    theta = (torch.randn(shape, generator=gen) * 0.05).to(device).requires_grad_(True)
    S = moments.feature_kernel(X) if name == "auto+S" else None
    hgen = torch.Generator(device=device).manual_seed(1)
    if name == "hutchinson":
        # load torch.func before the baseline: its import is not the penalty's memory
        importlib.import_module("torch.func")

    method = {"auto+S": "auto"}.get(name, name)
    chosen = moments.choose_hessian_method(G, N, d, C, K, kernel_given=S is not None, itemsize=4)
    if name in ("auto", "auto+S"):
        method_used = chosen
    elif name in ("kernel", "binary", "direct"):
        method_used = name
    elif name == "terms":
        method_used = chosen
    else:
        method_used = ""

    def step() -> float:
        theta.grad = None
        if name == "hutchinson":
            v = hutchinson_penalty(theta, X, y, dom, probes, hgen)
        elif name == "terms":
            t = moments.penalty_terms(theta, X, y, dom)
            v = (t.losses.mean(-1) + t.grad_variance + t.hess_variance).sum()
        elif name == "erm":
            z = moments.logits(theta, X)
            v = F.cross_entropy(z.reshape(-1, C), y.repeat(G)) * G
        else:
            v = moments.hessian_variance(theta, X, dom, method=method, kernel=S).sum()
        v.backward()
        return float(v.detach())

    step()  # warm-up: one-time initialisation is not the penalty's memory
    gc.collect()
    trim_heap()
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        value = step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        mem_note = "cuda max_memory_allocated"
    else:
        with PeakRSS() as mem:
            value = step()
        peak, mem_note = mem.bytes, mem.note
    seconds = timed(step, repeat=repeat, warmup=0)
    return dict(time_ms=seconds * 1e3, peak_mem_MB=max(peak, 0) / 2**20, value=value,
                method=method_used, mem_note=mem_note)


# ------------------------------------------------------------------------------ driver


def _shape_label(s: dict) -> str:
    return f"N={s['N']} K={s['K']} d={s['d']} C={s['C']}"


def run_all(args: argparse.Namespace) -> None:
    device = resolve_device(args.device)
    rows = []
    for spec in variants(args.quick):
        row = dict(shape=_shape_label(spec), G=spec["G"], variant=spec["variant"], method="", note="")
        if spec["variant"] == "direct":
            flops, need = moments.hessian_costs(spec["G"], spec["N"], spec["d"], spec["C"], spec["K"])["direct"]
            if need > DIRECT_LIMIT:
                row["note"] = f"skipped: would need ~{need / 2**30:.0f} GiB (per-domain Hessians)"
                row["method"] = "direct"
                rows.append(row)
                print(f"{row['shape']:>28} G={row['G']:<3} {row['variant']:<10} {row['note']}", flush=True)
                continue
        cmd = [sys.executable, "-m", "benchmarks.penalties", "--variant", json.dumps(spec),
               "--device", str(device), "--repeat", str(args.repeat), "--probes", str(args.probes)]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                              cwd=Path(__file__).resolve().parents[1])
        if proc.returncode != 0:
            row["note"] = "failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1][:120]
        else:
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            row.update(time_ms=res["time_ms"], peak_mem_MB=res["peak_mem_MB"], value=res["value"],
                       method=res["method"])
            row["mem_note"] = res["mem_note"]
        rows.append(row)
        print(f"{row['shape']:>28} G={row['G']:<3} {row['variant']:<10} {row['method']:<7} "
              f"{row.get('time_ms', float('nan')):9.2f} ms {row.get('peak_mem_MB', float('nan')):9.1f} MB "
              f"{row['note']}", flush=True)

    def t(shape_c: int, G: int, variant: str) -> float | None:
        for r in rows:
            if r["variant"] == variant and r["G"] == G and r["shape"].endswith(f"C={shape_c}"):
                return r.get("time_ms")
        return None

    gmax = max(r["G"] for r in rows)
    ratios = {}
    for C in (2, 65):
        pairs = {
            f"hutchinson_over_auto_C{C}": (t(C, 1, "hutchinson"), t(C, 1, "auto")),
            f"hutchinson_over_auto+S_C{C}": (t(C, 1, "hutchinson"), t(C, 1, "auto+S")),
            f"grid{gmax}_over_1head_auto_C{C}": (t(C, gmax, "auto"), t(C, 1, "auto")),
            f"grid{gmax}_over_1head_auto+S_C{C}": (t(C, gmax, "auto+S"), t(C, 1, "auto+S")),
            f"grid{gmax}_over_1head_terms_C{C}": (t(C, gmax, "terms"), t(C, 1, "terms")),
            f"grid{gmax}_over_1head_erm_C{C}": (t(C, gmax, "erm"), t(C, 1, "erm")),
            f"terms_over_erm_grid{gmax}_C{C}": (t(C, gmax, "terms"), t(C, gmax, "erm")),
            f"{gmax}_separate_calls_over_grid_auto_C{C}": (
                gmax * t(C, 1, "auto") if t(C, 1, "auto") else None, t(C, gmax, "auto")),
        }
        for k, (a, b) in pairs.items():
            if a and b:
                ratios[k] = a / b
    mem65 = next((r.get("peak_mem_MB") for r in rows
                  if r["variant"] == "auto" and r["G"] == 1 and r["shape"].endswith("C=65")), None)
    targets = {
        "C65 auto peak memory < 1024 MB": mem65 is not None and mem65 < 1024,
        "C65 hutchinson/auto >= 50x": ratios.get("hutchinson_over_auto_C65", 0) >= 50,
        "C2 hutchinson/auto >= 3x": ratios.get("hutchinson_over_auto_C2", 0) >= 3,
        f"C2 grid{gmax}/1 head (auto) <= 8x": ratios.get(f"grid{gmax}_over_1head_auto_C2", 1e9) <= 8,
        f"C65 grid{gmax}/1 head (auto) <= 8x": ratios.get(f"grid{gmax}_over_1head_auto_C65", 1e9) <= 8,
    }
    print("\nratios (time):")
    for k, v in ratios.items():
        print(f"  {k:<36} {v:8.2f}x")
    command = "python -m benchmarks.penalties" + (" --quick" if args.quick else "")
    extra = {"command": command, "device": str(device), "probes": args.probes, "repeat": args.repeat,
             "ratios": ratios, "targets": targets,
             "memory": "CPU: peak RSS minus the RSS after data creation, in a fresh process per variant; "
                       "CUDA: max_memory_allocated minus the allocation before the call"}
    jpath, mpath = write_results("penalties", rows, COLUMNS, extra=extra,
                                 title="CMA Hessian penalty: exact forms vs direct vs Hutchinson (value + backward)")
    with open(mpath, "a") as fh:
        fh.write("\n## Ratios (time)\n\n| ratio | value |\n|---|---|\n")
        for k, v in ratios.items():
            fh.write(f"| {k} | {v:.2f}x |\n")
        fh.write("\n## Targets (issue 3)\n\n| target | met |\n|---|---|\n")
        for k, v in targets.items():
            fh.write(f"| {k} | {'yes' if v else 'no'} |\n")
    for k, v in targets.items():
        print(f"  target {k}: {'met' if v else 'MISSED'}")
    print(f"\nwrote {jpath} and {mpath}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="reduced sizes (N=128, d=96, grid of 8)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--probes", type=int, default=100)
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        res = run_variant(json.loads(args.variant), resolve_device(args.device), args.repeat, args.probes)
        print(json.dumps(res))
    else:
        run_all(args)


if __name__ == "__main__":
    main()
