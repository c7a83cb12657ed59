"""Stage 1 engine: a dataset through a frozen encoder into an HDF5 feature file.

Safe to interrupt: rows go to ``OUT.partial`` in chunks; after each chunk the file is
flushed and ``rows_written`` advanced, so rerunning the same command continues where
the last committed chunk ended and produces the same numbers as an uninterrupted
run (batches have fixed boundaries and the encoder is in eval mode). Only a finished
file is renamed to OUT.

Fast: decoding and preprocessing (or tokenising) run in DataLoader worker processes
while the main process encodes the previous batch.

Scale-out: ``shard=(i, n)`` encodes the i-th of n contiguous runs of batches, cut at
the same batch boundaries as an unsharded run, so `probe merge` of the shards equals
the unsharded file row for row and bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from base.errors import UserError
from base.io import check_writable_dir
from base.version import code_version
from features.datasets.base import DatasetSpec
from features.encoders import BadItem, Encoder
from features.schema import SCHEMA, WRITE_IDENTITY
from features.store import (
    FeatureWriter,
    decode_json_attr,
    identity_difference,
    open_feature_file,
    written_identity,
)

DTYPES = ("float32", "float16")
# Commit (flush + advance rows_written) at least this often, and whenever this many
# rows are buffered: bounds both the work lost to a kill and the memory held.
DEFAULT_COMMIT_SECONDS = 5.0
MAX_BUFFER_ROWS = 4096


def tune_cpu_allocator(mmap_threshold_mb: int = 256, trim_threshold_mb: int = 1024) -> bool:
    """Keep freed tensor memory in the process instead of returning it to the OS (glibc only).

    glibc hands every large block back to the kernel when it is freed, so a
    convnet's forward pass re-faults its activations page by page on every batch:
    ~120k page faults per EfficientNet-Lite0 batch of 16, about 40% of its CPU
    time. Raising the mmap and trim thresholds keeps those pages mapped (and lets
    resident memory stay up to ``trim_threshold_mb`` higher). Process-wide, so the
    command line calls it, not the library. Returns whether it took effect.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
        ok = libc.mallopt(m_mmap_threshold, mmap_threshold_mb << 20) == 1
        return bool(libc.mallopt(m_trim_threshold, trim_threshold_mb << 20) == 1 and ok)
    except (OSError, AttributeError):
        return False


def trim_heap() -> None:
    """Return freed heap memory to the OS (glibc's malloc_trim; a no-op elsewhere)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name and sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(name).malloc_trim(0)
        except (OSError, AttributeError):
            pass


def default_workers(device_type: str = "cpu") -> int:
    """Loader processes when --workers is not given.

    On CUDA, worker processes decode while the GPU encodes. On the CPU none: each
    batch is decoded by a pool of threads in this process between forward passes
    (``_in_process_batches``). The model already keeps every core busy there, and
    decoding alongside it stalls its parallel regions, which all wait for their
    slowest thread (measured with benchmarks/extract.py on 2 cores, EfficientNet-Lite0:
    2 overlapped worker processes reach 0.63 of the forward-only rate, one thread in
    the main process 0.77, a thread per core between passes 0.83).
    """
    return min(4, os.cpu_count() or 1) if device_type == "cuda" else 0


def decode_threads(modality: str) -> int:
    """Threads that prepare a batch in this process (--workers 0): one per core torch
    uses for images, whose decoding and resizing release the GIL; one for texts,
    which the tokenizer batches itself."""
    import torch

    return max(1, torch.get_num_threads()) if modality == "image" else 1


def default_batch_size(modality: str, device_type: str) -> int:
    """Per-device defaults; on CPU small image batches are faster (they stay in cache)."""
    if device_type == "cuda":
        return 256
    return 16 if modality == "image" else 64


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"i/N"`` -> (i, N) with 0 <= i < N; None for no sharding."""
    if text is None or text == "":
        return None
    try:
        i_text, n_text = text.split("/")
        index, count = int(i_text), int(n_text)
    except ValueError as exc:
        raise UserError(f"--shard {text!r}: write it as i/N, e.g. --shard 0/4 for the first of 4 shards") from exc
    if count < 1 or not 0 <= index < count:
        raise UserError(f"--shard {text}: need N >= 1 and 0 <= i < N (shards are numbered from 0)")
    return index, count


def shard_output_path(out: Path, shard: tuple[int, int] | None) -> Path:
    """``feats.h5`` + shard 2/8 -> ``feats.shard2of8.h5``, so array jobs never share a file."""
    if shard is None:
        return out
    return out.with_name(f"{out.stem}.shard{shard[0]}of{shard[1]}{out.suffix}")


def partial_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def batch_bounds(n_rows: int, batch_size: int, shard: tuple[int, int] | None = None) -> list[tuple[int, int]]:
    """The [start, stop) row ranges of the batches this run encodes.

    Batches are cut on the whole dataset first and shards take contiguous runs of
    them, so a batch holds the same rows whether or not the run is sharded.
    """
    bounds = [(s, min(s + batch_size, n_rows)) for s in range(0, n_rows, batch_size)]
    if shard is None:
        return bounds
    i, n = shard
    k = len(bounds)
    return bounds[i * k // n:(i + 1) * k // n]


def rows_fingerprint(spec: DatasetSpec) -> str:
    """sha256 of what the rows are (ids, labels, splits, names): not of the pixels."""
    h = hashlib.sha256()
    h.update("\x00".join(spec.ids).encode("utf-8"))
    for arr in (spec.y, spec.a, spec.group, spec.split):
        h.update(np.ascontiguousarray(arr).tobytes())
    h.update(json.dumps([spec.class_names, spec.group_names]).encode("utf-8"))
    return h.hexdigest()


@dataclass
class ExtractResult:
    path: Path
    status: str  # "written", "resumed" or "already complete"
    rows: int
    dim: int
    seconds: float
    skipped: list[str] = field(default_factory=list)
    resumed_from: int = 0


class _Rows:
    """Map-style dataset for the DataLoader: row i -> (i, prepared item or BadItem)."""

    def __init__(self, items: Sequence[Any], prepare: Any) -> None:
        self.items = items
        self.prepare = prepare

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, Any]:
        return i, self.prepare(self.items[i])


class _Collate:
    """Split a batch into readable rows (collated by the encoder) and bad ones."""

    def __init__(self, collate: Any) -> None:
        self.collate = collate

    def __call__(self, rows: list[tuple[int, Any]]) -> tuple[list[int], Any, list[tuple[int, BadItem]]]:
        good = [(i, x) for i, x in rows if not isinstance(x, BadItem)]
        bad = [(i, x) for i, x in rows if isinstance(x, BadItem)]
        batch = self.collate([x for _, x in good]) if good else None
        return [i for i, _ in good], batch, bad


def _in_process_batches(rows: _Rows, collate: _Collate, todo: list[tuple[int, int]],
                        threads: int) -> Iterator[tuple[list[int], Any, list[tuple[int, BadItem]]]]:
    """What the DataLoader yields with --workers 0, each batch's items prepared by
    ``threads`` threads at once and collated before the model runs on it.

    Not overlapped with the forward pass on purpose (see default_workers): between
    passes the decoding has every core to itself.
    """
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(threads, thread_name_prefix="probe-decode") if threads > 1 else None
    try:
        for start, end in todo:
            prepared = list(pool.map(rows.__getitem__, range(start, end)) if pool
                            else map(rows.__getitem__, range(start, end)))
            yield collate(prepared)
    finally:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


def _mismatch_message(path: Path, found: dict[str, Any], expected: dict[str, Any], remedy: str) -> str | None:
    diff = identity_difference(found, expected, WRITE_IDENTITY)
    if diff is None:
        return None
    if diff.startswith("rows_sha256"):
        return (f"{path}: holds other rows (ids, labels or splits) than dataset {expected['dataset']!r} gives "
                f"now; {remedy}")
    return f"{path}: was written with a different {diff}; {remedy}"


def _expected_ids(ids: np.ndarray, bounds: list[tuple[int, int]], skipped: set[str]) -> np.ndarray:
    rows = np.concatenate([np.arange(s, e) for s, e in bounds]) if bounds else np.zeros(0, np.int64)
    got = ids[rows]
    if skipped:
        got = got[[i not in skipped for i in got]]
    return got


def _ids_of(h5: h5py.File, n: int) -> np.ndarray:
    return np.array([v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in h5["id"][:n]], dtype=object)


def _console() -> Any:
    from rich.console import Console

    # Warnings show even with --quiet; only progress and the summary are silenced.
    return Console(stderr=True, highlight=False, soft_wrap=True)


def _warn(console: Any, message: str) -> None:
    console.print(f"[yellow]warning:[/yellow] {message}", markup=True, highlight=False)


def extract(spec: DatasetSpec, encoder: Encoder, out: str | Path, *, batch_size: int | None = None,
            workers: int | None = None, dtype: str = "float32", shard: tuple[int, int] | None = None,
            skip_bad: bool = False, overwrite: bool = False, quiet: bool = False,
            commit_seconds: float = DEFAULT_COMMIT_SECONDS) -> ExtractResult:
    """Encode ``spec`` with ``encoder`` into ``out`` (resuming ``out.partial`` if there is one)."""
    t0 = time.perf_counter()
    out = Path(out)
    console = _console()
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype!r}: choose float32 or float16")
    if encoder.modality != spec.modality:
        raise UserError(f"--encoder {encoder.name} encodes {encoder.modality}s but dataset {spec.name!r} has "
                        f"{spec.modality}s; choose a {spec.modality} encoder (or --tower {spec.modality})")
    if spec.modality == "text" and len(spec) and isinstance(spec.items[0], tuple) and not encoder.supports_pairs:
        raise UserError(f"--encoder {encoder.name} encodes single texts but dataset {spec.name!r} has sentence "
                        "pairs; use an hf: encoder (or minilm)")
    if out.is_dir():
        raise UserError(f"--out {out}: is a folder; give a file name such as {out / 'features.h5'}")
    check_writable_dir(out.parent if str(out.parent) else Path("."), "--out")
    workers = default_workers(encoder.device.type) if workers is None else workers
    if workers < 0:
        raise UserError(f"--workers {workers}: must be 0 (load in the main process) or more")

    if batch_size is not None and batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: must be at least 1")
    partial = partial_path(out)
    if batch_size is None:
        resumed = None if overwrite else _partial_batch_size(partial)
        batch_size = resumed or default_batch_size(spec.modality, encoder.device.type)
    bounds = batch_bounds(len(spec), batch_size, shard)
    shard_rows = [bounds[0][0], bounds[-1][1]] if bounds else [0, 0]
    ids = np.asarray(spec.ids, dtype=object)
    expected = {
        "schema": SCHEMA, "dataset": spec.name, **encoder.info(),
        "class_names": spec.class_names, "group_names": spec.group_names, "source": spec.source,
        "rows_sha256": rows_fingerprint(spec), "total_rows": len(spec), "batch_size": batch_size,
        "shard": f"{shard[0]}/{shard[1]}" if shard else "", "shard_rows": shard_rows,
        "features_dtype": dtype,
    }

    if out.exists() and not overwrite:
        return _existing_output(out, expected, ids, bounds, console, quiet, t0)

    writer, batches_done, skipped = _open_partial(partial, expected, ids, bounds, overwrite, console)
    resumed_from = writer.rows_written
    writer.close()  # reopened by _run once its worker processes exist (see there)
    if (resumed_from or batches_done) and not quiet:
        console.print(f"resuming {partial}: {resumed_from} rows already written")
    _run(spec, encoder, partial, bounds, batches_done, skipped, batch_size=batch_size, workers=workers,
         dtype=dtype, skip_bad=skip_bad, quiet=quiet, commit_seconds=commit_seconds, console=console)
    os.replace(partial, out)
    rows = sum(e - s for s, e in bounds) - len(skipped)
    if skipped:
        _warn(console, f"{len(skipped)} unreadable row(s) skipped (--skip-bad), listed in the file's "
                       f"'skipped' attribute; first: {skipped[0]}")
    seconds = time.perf_counter() - t0
    if not quiet:
        console.print(f"wrote {rows} rows x {encoder.dim} features to {out} in {seconds:.1f} s")
    return ExtractResult(out, "resumed" if resumed_from else "written", rows, encoder.dim, seconds,
                         list(skipped), resumed_from)


def _partial_batch_size(partial: Path) -> int | None:
    """Resuming without --batch-size keeps the partial file's batches (and so its numbers)."""
    if not partial.exists():
        return None
    try:
        with h5py.File(partial, "r") as h5:
            value = h5.attrs.get("batch_size")
            return int(value) if value is not None else None
    except (OSError, ValueError, TypeError):
        return None


def _existing_output(out: Path, expected: dict[str, Any], ids: np.ndarray, bounds: list[tuple[int, int]],
                     console: Any, quiet: bool, t0: float) -> ExtractResult:
    remedy = "pass --overwrite to replace it, or choose another --out"
    try:
        h5 = open_feature_file(out)
    except UserError as exc:
        raise UserError(f"{out}: exists and is not a readable feature file; {remedy}") from exc
    try:
        with h5:
            found = written_identity(h5)
            if found.get("schema") != SCHEMA:
                raise UserError(f"{out}: exists and is not a probe feature file; {remedy}")
            msg = _mismatch_message(out, found, expected, remedy)
            if msg:
                raise UserError(msg)
            if not bool(found.get("complete", False)):
                raise UserError(f"{out}: exists but is incomplete; {remedy}")
            skipped = [str(s) for s in decode_json_attr(found.get("skipped"), [])]
            want = _expected_ids(ids, bounds, set(skipped))
            n = int(h5["features"].shape[0])
            if n != len(want) or not np.array_equal(_ids_of(h5, n), want):
                raise UserError(f"{out}: holds other rows than dataset {expected['dataset']!r} gives now; {remedy}")
            dim = int(h5["features"].shape[1])
    except UserError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise UserError(f"{out}: exists and cannot be read as a feature file ({exc}); {remedy}") from exc
    if not quiet:
        console.print(f"{out} is already complete ({n} rows); nothing to do (--overwrite to extract again)")
    return ExtractResult(out, "already complete", n, dim, time.perf_counter() - t0, skipped)


def _open_partial(partial: Path, expected: dict[str, Any], ids: np.ndarray, bounds: list[tuple[int, int]],
                  overwrite: bool, console: Any) -> tuple[FeatureWriter, int, list[str]]:
    """Continue ``partial`` when it belongs to this run, else start it afresh."""
    if partial.exists() and overwrite:
        partial.unlink()
    if partial.exists():
        state = _resume_state(partial, expected, ids, bounds, console)
        if state is not None:
            return state
        partial.unlink()
    attrs = {k: v for k, v in expected.items() if k != "features_dtype"}
    attrs.update(created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), **code_version(),
                 skipped=[], batches_done=0)
    try:
        writer = FeatureWriter.create(partial, attrs, expected["dim"], expected["features_dtype"])
    except OSError as exc:
        raise UserError(f"{partial}: cannot be created ({exc}); check the --out folder") from exc
    return writer, 0, []


def _resume_state(partial: Path, expected: dict[str, Any], ids: np.ndarray, bounds: list[tuple[int, int]],
                  console: Any) -> tuple[FeatureWriter, int, list[str]] | None:
    remedy = "rerun the command that started it to finish it, or pass --overwrite to start again"
    try:
        writer = FeatureWriter.reopen(partial)
    except OSError as exc:
        if "lock" in str(exc).lower():
            raise UserError(f"{partial}: another `probe extract` is writing it; wait for it to finish") from exc
        _warn(console, f"{partial} cannot be opened (interrupted while writing?); starting again from scratch")
        return None
    try:
        found = written_identity(writer.h5)
        if found.get("schema") != SCHEMA:
            _warn(console, f"{partial} is not an unfinished probe feature file; starting again from scratch")
            writer.close()
            return None
        msg = _mismatch_message(partial, found, expected, remedy)
        if msg is None and int(found.get("batch_size", -1)) != expected["batch_size"]:
            msg = (f"{partial}: was started with --batch-size {found.get('batch_size')}; resume with that "
                   "batch size (or without --batch-size), or pass --overwrite to start again")
        if msg:
            writer.close()
            raise UserError(msg)
        rows = writer.rows_written
        done = int(found.get("batches_done", 0))
        skipped = [str(s) for s in decode_json_attr(found.get("skipped"), [])]
        want = _expected_ids(ids, bounds[:done], set(skipped))
        if done > len(bounds) or rows != len(want) or not np.array_equal(_ids_of(writer.h5, rows), want):
            writer.close()
            raise UserError(f"{partial}: its rows do not line up with this dataset; {remedy}")
        # Read back what is there: a kill can leave a file that opens but does not read.
        if not np.isfinite(np.asarray(writer.h5["features"][:rows], dtype=np.float32)).all():
            raise OSError("non-finite features in committed rows")
        writer.truncate(rows)
        if found.get("device") != expected.get("device") or found.get("precision") != expected.get("precision"):
            _warn(console, f"{partial} was started on {found.get('device')} ({found.get('precision')}); this run "
                           f"uses {expected.get('device')} ({expected.get('precision')}): rows may differ in the "
                           "last digits")
    except UserError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
        writer.close()
        _warn(console, f"{partial} is damaged ({' '.join(str(exc).split())[:100]}); starting again from scratch")
        return None
    return writer, done, skipped


# Niceness of DataLoader workers when the model runs on the CPU. The workers then
# share cores with torch's intra-op threads, whose parallel regions all wait for
# their slowest thread: a worker holding a core stalls every region of the forward
# pass. At a lower priority the kernel hands the core back to a waking torch thread
# sooner, and the workers still get the time the model leaves idle. Not the lowest
# priority (19): with other processes busy on the machine the workers would starve
# and the model wait for them (measured on 2 cores: 19 collapses under outside load,
# 5-10 holds up, 0 loses most of the overlap).
CPU_WORKER_NICE = 10


class _WorkerInit:
    def __init__(self, nice: int) -> None:
        self.nice = nice

    def __call__(self, _: int) -> None:
        if self.nice and hasattr(os, "nice"):
            try:
                os.nice(self.nice)
            except OSError:  # not permitted here: run at normal priority
                pass


def _progress(quiet: bool, console: Any) -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:,.0f} rows/s" if speed else "? rows/s")

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=quiet)


def _run(spec: DatasetSpec, encoder: Encoder, partial: Path, bounds: list[tuple[int, int]],
         batches_done: int, skipped: list[str], *, batch_size: int, workers: int, dtype: str,
         skip_bad: bool, quiet: bool, commit_seconds: float, console: Any) -> None:
    import torch
    from torch.utils.data import DataLoader

    todo = bounds[batches_done:]
    ids = spec.ids
    buffer: list[dict[str, np.ndarray]] = []
    state = {"done": batches_done, "buffered": 0, "last": time.monotonic()}

    def commit() -> None:
        if buffer:
            rows = {k: np.concatenate([b[k] for b in buffer]) for k in buffer[0]}
            writer.append(rows)
            buffer.clear()
        writer.commit(batches_done=state["done"], skipped=skipped)
        state["buffered"] = 0
        state["last"] = time.monotonic()

    if workers > 0 and spec.modality == "text":
        # Tokenizers' own threads and forked workers deadlock; workers already parallelise.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    rows_ds, collate = _Rows(spec.items, encoder.prepare), _Collate(encoder.collate)
    if workers > 0 and todo:
        loader: Any = DataLoader(
            rows_ds, batch_sampler=[list(range(s, e)) for s, e in todo], num_workers=workers, collate_fn=collate,
            worker_init_fn=_WorkerInit(CPU_WORKER_NICE if encoder.device.type == "cpu" else 0),
            pin_memory=encoder.device.type == "cuda", prefetch_factor=4,
        )
    else:
        loader = _in_process_batches(rows_ds, collate, todo, decode_threads(spec.modality))
    total = sum(e - s for s, e in bounds)
    start_rows = sum(e - s for s, e in bounds[:batches_done])
    finished = False
    # Start the workers before opening the file: a forked worker would inherit the
    # HDF5 file lock and, if this process is killed, hold it until it notices (~5 s),
    # refusing the rerun that should resume.
    if workers > 0 and todo:
        # Forked workers share this process's pages copy-on-write, and every page the
        # model then writes to is copied once: with a large retained heap (see
        # tune_cpu_allocator) ~0.5 s on the first batch. Trimmed, it gets fresh pages.
        trim_heap()
    batches = iter(loader)
    writer = FeatureWriter.reopen(partial)
    with _progress(quiet, console) as progress:
        task = progress.add_task(f"{spec.name} > {encoder.name}", total=total, completed=start_rows)
        try:
            for rows, batch, bad in batches:
                if bad and not skip_bad:
                    i, item = bad[0]
                    raise UserError(f"{item.what}: cannot read row {ids[i]!r} ({item.reason}); fix or remove "
                                    "it, or pass --skip-bad to leave such rows out")
                skipped.extend(ids[i] for i, _ in bad)
                if rows:
                    feats = encoder.encode(batch)
                    arr = feats.detach().to("cpu", torch.float32).numpy().astype(dtype, copy=False)
                    finite = np.isfinite(arr).all(axis=1)
                    if not finite.all():
                        row = ids[rows[int(np.flatnonzero(~finite)[0])]]
                        hint = "; use --dtype float32" if dtype == "float16" else "; check the weights"
                        raise UserError(f"encoder {encoder.name} gave NaN or infinite features for row {row!r}{hint}")
                    idx = np.asarray(rows, dtype=np.int64)
                    buffer.append({"features": arr, "y": spec.y[idx], "a": spec.a[idx], "group": spec.group[idx],
                                   "split": spec.split[idx], "id": np.asarray([ids[i] for i in rows], dtype=object),
                                   "index": idx})
                    state["buffered"] += len(rows)
                state["done"] += 1
                progress.advance(task, len(rows) + len(bad))
                if state["buffered"] >= MAX_BUFFER_ROWS or time.monotonic() - state["last"] >= commit_seconds:
                    commit()
            finished = True
        finally:
            # Whole batches already encoded are kept, whatever stopped the loop (Ctrl-C, a bad row).
            try:
                commit()
                if finished:
                    writer.finish(batches_done=state["done"], skipped=skipped)
            except (OSError, RuntimeError, ValueError):
                if finished:
                    raise
            finally:
                writer.close()
                del batches  # stops the workers
