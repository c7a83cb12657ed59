"""End-to-end extraction (JPEGs on disk -> HDF5) against the encoder's forward pass alone.

For each encoder and worker count, in one run and interleaved (each extraction
between two forward-only passes, so that load from other processes hits both alike):
  forward  = encoder.encode over pre-decoded, pre-transformed, pre-batched tensors
  extract  = features.extract.extract on the JPEG paths (decode, preprocess, encode,
             write HDF5 in chunks, rename), same model and batch size
and reports extract / forward throughput. Target: >= 0.85.

    .venv/bin/python benchmarks/extract.py              # 300 images, every encoder below
    .venv/bin/python benchmarks/extract.py --quick      # a reduced check (60 images)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from base.device import resolve_device  # noqa: E402
from benchmarks._common import write_results  # noqa: E402
from features.datasets.base import DatasetSpec  # noqa: E402
from features.encoders import Encoder, load_encoder  # noqa: E402
from features.extract import extract  # noqa: E402
from features.loading import decode_threads, default_workers, tune_cpu_allocator  # noqa: E402

ENCODERS = {
    "efficientnet-lite0": {"name": "efficientnet-lite0"},
    "open_clip:ViT-S-32-alt": {"name": "open_clip:ViT-S-32-alt", "weights": "none"},
    # CLIP's own ViT-B/32, the most used image encoder of this literature.
    "open_clip:ViT-B-32": {"name": "open_clip:ViT-B-32", "weights": "none"},
}


def make_jpegs(folder: Path, n: int, seed: int = 0) -> list[str]:
    """Real photo content (scikit-learn's two sample photos), random 400x300 crops, JPEG q=90."""
    from PIL import Image
    from sklearn.datasets import load_sample_image

    rng = np.random.default_rng(seed)
    photos = [load_sample_image("china.jpg"), load_sample_image("flower.jpg")]
    paths = []
    for i in range(n):
        src = photos[i % 2]
        y = int(rng.integers(0, src.shape[0] - 300))
        x = int(rng.integers(0, src.shape[1] - 400))
        crop = src[y:y + 300, x:x + 400]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        path = folder / f"img{i:04d}.jpg"
        Image.fromarray(np.ascontiguousarray(crop)).save(path, quality=90)
        paths.append(str(path))
    return paths


def spec_for(paths: list[str]) -> DatasetSpec:
    n = len(paths)
    return DatasetSpec(name="bench", modality="image", items=paths, ids=[Path(p).name for p in paths],
                       y=np.arange(n) % 2, a=np.zeros(n), group=2 * (np.arange(n) % 2), split=np.zeros(n),
                       class_names=["a", "b"], group_names=["a/0", "a/1", "b/0", "b/1"])


def forward_rate(enc: Encoder, batches: list[torch.Tensor], n: int) -> float:
    if enc.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for b in batches:
        enc.encode(b)
    if enc.device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def extract_rate(enc: Encoder, spec: DatasetSpec, out: Path, batch_size: int, workers: int) -> float:
    t0 = time.perf_counter()
    extract(spec, enc, out, batch_size=batch_size, workers=workers, overwrite=True)
    return len(spec) / (time.perf_counter() - t0)


def loader_label(workers: int) -> str:
    if workers:
        return f"{workers} process{'es' if workers > 1 else ''}, overlapped"
    return f"in-process, {decode_threads('image')} thread(s) between passes"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300, help="JPEGs to generate (default 300)")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved repetitions; best of each is kept")
    ap.add_argument("--encoders", default=",".join(ENCODERS), help="comma-separated, from: " + ", ".join(ENCODERS))
    ap.add_argument("--workers", default=None, help="comma-separated worker counts (default: 0 and the default)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: extract's default for the device")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quick", action="store_true", help="60 images, 2 repetitions: checks the script runs")
    args = ap.parse_args()
    if args.quick:
        args.n, args.repeat = 60, 2
    device_type = resolve_device(args.device).type
    workers_list = ([int(w) for w in args.workers.split(",")] if args.workers
                    else sorted({0, 1, 2, default_workers(device_type)}))
    # As `probe extract` does on the CPU; both sides of the comparison run with it.
    allocator_tuned = tune_cpu_allocator() if args.device in ("auto", "cpu") and not torch.cuda.is_available() \
        else False
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        paths = make_jpegs(tmpdir, args.n)
        spec = spec_for(paths)
        for key in args.encoders.split(","):
            enc = load_encoder(**ENCODERS[key], device=args.device)
            bs = args.batch_size or enc.default_batch_size
            prepared = [enc.prepare(p) for p in paths]
            batches = [enc.collate(prepared[s:s + bs]) for s in range(0, len(prepared), bs)]
            forward_rate(enc, batches[:2], 2 * bs)  # warm-up: allocator, kernels
            fwd: dict[int, list[float]] = {w: [] for w in workers_list}
            e2e: dict[int, list[float]] = {w: [] for w in workers_list}
            pair: dict[int, list[float]] = {w: [] for w in workers_list}
            for _ in range(args.repeat):
                for w in workers_list:
                    # Forward passes right before and after each extraction: the ratio of
                    # neighbours is robust to load that other processes put on the machine.
                    before = forward_rate(enc, batches, len(paths))
                    e2e[w].append(extract_rate(enc, spec, tmpdir / "out.h5", bs, w))
                    after = forward_rate(enc, batches, len(paths))
                    fwd[w] += [before, after]
                    pair[w].append(e2e[w][-1] / ((before + after) / 2))
            for w in workers_list:
                best_fwd, best = max(fwd[w]), max(e2e[w])
                rows.append({
                    "encoder": key, "device": str(enc.device), "batch": bs, "workers": w,
                    "loader": loader_label(w), "images": len(paths),
                    "forward_img_s": best_fwd, "extract_img_s": best, "ratio_best": best / best_fwd,
                    "ratio": statistics.median(pair[w]), "pair_ratios": [round(v, 3) for v in pair[w]],
                    "forward_runs": [round(v, 2) for v in fwd[w]], "extract_runs": [round(v, 2) for v in e2e[w]],
                })
                print(f"{key:24s} bs={bs:<4d} workers={w}  forward {best_fwd:7.1f} img/s  extract {best:7.1f} "
                      f"img/s  ratio {rows[-1]['ratio']:.3f} (median of neighbours; best/best "
                      f"{best / best_fwd:.3f})", flush=True)
    cols = ["encoder", "device", "batch", "workers", "loader", "images", "forward_img_s", "extract_img_s", "ratio",
            "ratio_best"]
    extra = {"target": "extract/forward >= 0.85 at the default workers",
             "default_workers": default_workers(device_type), "repeat": args.repeat, "allocator_tuned": allocator_tuned,
             "note": "forward = encode() on pre-loaded tensors; extract = JPEG paths to a finished HDF5 file; "
                     "ratio = median over repetitions of extract / mean(forward just before, just after); "
                     "ratio_best = best extract / best forward"}
    jpath, mpath = write_results("extract", rows, cols, extra=extra,
                                 title="Extraction throughput: end to end vs forward pass alone")
    print(f"wrote {jpath} and {mpath}")


if __name__ == "__main__":
    main()
