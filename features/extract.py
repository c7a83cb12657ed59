"""Stage 1 engine: a dataset through a frozen encoder into an HDF5 feature file.

Safe to interrupt: rows go to ``OUT.partial`` in chunks; after each chunk the file is
flushed and ``rows_written`` advanced, so rerunning the same command continues where
the last committed chunk ended and produces the same numbers as an uninterrupted
run (batches have fixed boundaries and the encoder is in eval mode). Only a finished
file is renamed to OUT.

Fast: decoding and preprocessing (or tokenising) run in DataLoader worker processes
while the main process encodes the previous batch (:mod:`features.loading`).

Quiet: progress, warnings and notes go to the caller's callbacks (:mod:`base.progress`);
the command line draws them.

Scale-out: ``shard=(i, n)`` encodes the i-th of n contiguous runs of batches, cut at
the same batch boundaries as an unsharded run, so `probe merge` of the shards equals
the unsharded file row for row and bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from base.errors import UserError, either
from base.io import check_writable_dir
from base.progress import NoProgress, Notify, Progress, ignore
from base.version import code_version
from features.datasets.base import DatasetSpec
from features.datasets.registry import dataset_info
from features.encoders.core import Encoder
from features.encoders.registry import default_encoder, encoder_hints
from features.loading import batches, default_workers, trim_heap
from features.prompts import ClassPrompts, class_prompts
from features.schema import FEATURE_DTYPES, PROMPT_ATTR, SCHEMA, WRITE_IDENTITY
from features.store import (
    FeatureWriter,
    decode_json_attr,
    identity_difference,
    open_feature_file,
    written_identity,
)

# Commit (flush + advance rows_written) at least this often, and whenever this many
# rows are buffered: bounds both the work lost to a kill and the memory held.
DEFAULT_COMMIT_SECONDS = 5.0
MAX_BUFFER_ROWS = 4096


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"i/N"`` -> (i, N) with 0 <= i < N; None for no sharding."""
    if text is None or text == "":
        return None
    try:
        i_text, n_text = text.split("/")
        index, count = int(i_text), int(n_text)
    except ValueError as exc:
        raise UserError(f"`shard` {text!r}: write it as i/N, e.g. `shard` 0/4 for the first of 4 shards") from exc
    if count < 1 or not 0 <= index < count:
        raise UserError(f"`shard` {text}: need N >= 1 and 0 <= i < N (shards are numbered from 0)")
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


def check_dtype(dtype: str) -> None:
    if dtype not in FEATURE_DTYPES:
        raise UserError(f"`dtype` {dtype!r}: choose {either(FEATURE_DTYPES)}")


def check_output(out: Path) -> None:
    """Refuse an output path that cannot become a feature file, before any work is done."""
    if out.is_dir():
        raise UserError(f"`out` {out}: is a folder; give a file name such as {out / 'features.h5'}")
    check_writable_dir(out.parent if str(out.parent) else Path("."), "`out`")


def choose_encoder(dataset: str, modality: str, encoder: str | None = None) -> str:
    """``encoder`` if given, else the dataset's default encoder, else the default for its modality."""
    if encoder is not None:
        return encoder
    chosen = dataset_info(dataset).default_encoder or default_encoder(modality)
    if chosen is None:
        hints = ", or ".join(f"`encoder` {hint}" for hint in encoder_hints(modality))
        raise UserError(f"`encoder` is required for {modality} dataset {dataset!r}: e.g. {hints}")
    return chosen


def _check_pair(spec: DatasetSpec, encoder: Encoder) -> None:
    """Refuse an encoder that cannot encode the dataset's items."""
    if encoder.modality != spec.modality:
        raise UserError(f"`encoder` {encoder.name} encodes {encoder.modality}s but dataset {spec.name!r} has "
                        f"{spec.modality}s; choose a {spec.modality} encoder (or `tower` {spec.modality})")
    if spec.modality == "text" and len(spec) and isinstance(spec.items[0], tuple) and not encoder.supports_pairs:
        raise UserError(f"`encoder` {encoder.name} encodes single texts but dataset {spec.name!r} has sentence "
                        "pairs; use an hf: encoder (or minilm)")


def extract(spec: DatasetSpec, encoder: Encoder, out: str | Path, *, batch_size: int | None = None,
            workers: int | None = None, dtype: str = FEATURE_DTYPES[0], shard: tuple[int, int] | None = None,
            skip_bad: bool = False, overwrite: bool = False, commit_seconds: float = DEFAULT_COMMIT_SECONDS,
            prompts: list[str] | None = None, class_names: list[str] | str | None = None,
            progress: Progress | None = None, warn: Notify = ignore, note: Notify = ignore) -> ExtractResult:
    """Encode ``spec`` with ``encoder`` into ``out`` (resuming ``out.partial`` if there is one).

    ``prompts`` (templates with ``{}``, or files of them) also store the zero-shot classifier
    of a two-tower encoder (:mod:`features.prompts`), its class names filled from
    ``class_names`` or the dataset's. ``progress`` follows the rows encoded; ``warn`` gets
    what the caller should know (a damaged partial file started again, rows skipped),
    ``note`` what it may like to (a resumed file). The result says what was done.
    """
    t0 = time.perf_counter()
    out = Path(out)
    check_dtype(dtype)
    _check_pair(spec, encoder)
    check_output(out)
    if class_names is not None and not prompts:
        raise UserError("`class_names` are the names filled into `prompts`; give `prompts` too")
    zero_shot = class_prompts(encoder, spec.class_names, prompts, class_names) if prompts else None
    workers = default_workers(encoder.device.type) if workers is None else workers
    if workers < 0:
        raise UserError(f"`workers` {workers}: must be 0 (load in the main process) or more")

    if batch_size is not None and batch_size < 1:
        raise UserError(f"`batch_size` {batch_size}: must be at least 1")
    partial = partial_path(out)
    if batch_size is None:
        resumed = None if overwrite else _partial_batch_size(partial)
        batch_size = resumed or encoder.default_batch_size
    bounds = batch_bounds(len(spec), batch_size, shard)
    shard_rows = [bounds[0][0], bounds[-1][1]] if bounds else [0, 0]
    ids = np.asarray(spec.ids, dtype=object)
    expected = {
        "schema": SCHEMA, "dataset": spec.name, **encoder.info(),
        "class_names": spec.class_names, "group_names": spec.group_names, "source": spec.source,
        "rows_sha256": rows_fingerprint(spec), "total_rows": len(spec), "batch_size": batch_size,
        "shard": f"{shard[0]}/{shard[1]}" if shard else "", "shard_rows": shard_rows,
        "features_dtype": dtype, PROMPT_ATTR: zero_shot.attribute() if zero_shot else None,
    }

    if out.exists() and not overwrite:
        return _existing_output(out, expected, ids, bounds, t0)

    writer, batches_done, skipped = _open_partial(partial, expected, ids, bounds, overwrite, warn, zero_shot)
    resumed_from = writer.rows_written
    writer.close()  # reopened by _run once its worker processes exist (see there)
    if resumed_from or batches_done:
        note(f"resuming {partial}: {resumed_from} rows already written")
    _run(spec, encoder, partial, bounds, batches_done, skipped, workers=workers, dtype=dtype,
         skip_bad=skip_bad, commit_seconds=commit_seconds, progress=progress or NoProgress())
    os.replace(partial, out)
    rows = sum(e - s for s, e in bounds) - len(skipped)
    if skipped:
        warn(f"{len(skipped)} unreadable row(s) skipped (`skip_bad`), listed in the file's "
             f"'skipped' attribute; first: {skipped[0]}")
    return ExtractResult(out, "resumed" if resumed_from else "written", rows, encoder.dim,
                         time.perf_counter() - t0, list(skipped), resumed_from)


def _partial_batch_size(partial: Path) -> int | None:
    """Resuming without ``batch_size`` keeps the partial file's batches (and so its numbers)."""
    if not partial.exists():
        return None
    try:
        with h5py.File(partial, "r") as h5:
            value = h5.attrs.get("batch_size")
            return int(value) if value is not None else None
    except (OSError, ValueError, TypeError):
        return None


def _existing_output(out: Path, expected: dict[str, Any], ids: np.ndarray, bounds: list[tuple[int, int]],
                     t0: float) -> ExtractResult:
    remedy = "pass `overwrite` to replace it, or choose another `out`"
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
    return ExtractResult(out, "already complete", n, dim, time.perf_counter() - t0, skipped)


def _open_partial(partial: Path, expected: dict[str, Any], ids: np.ndarray, bounds: list[tuple[int, int]],
                  overwrite: bool, warn: Notify, zero_shot: ClassPrompts | None) -> tuple[FeatureWriter, int, list[str]]:
    """Continue ``partial`` when it belongs to this run, else start it afresh."""
    if partial.exists() and overwrite:
        partial.unlink()
    if partial.exists():
        state = _resume_state(partial, expected, ids, bounds, warn)
        if state is not None:
            return state
        partial.unlink()
    # A file without prompts has no prompts attribute at all, like every file before them.
    attrs = {k: v for k, v in expected.items() if k != "features_dtype" and not (k == PROMPT_ATTR and v is None)}
    attrs.update(created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), **code_version(),
                 skipped=[], batches_done=0)
    try:
        writer = FeatureWriter.create(partial, attrs, expected["dim"], expected["features_dtype"])
        if zero_shot is not None:
            writer.write_prompts(zero_shot.embeddings)
    except OSError as exc:
        raise UserError(f"{partial}: cannot be created ({exc}); check the `out` folder") from exc
    return writer, 0, []


def _resume_state(partial: Path, expected: dict[str, Any], ids: np.ndarray, bounds: list[tuple[int, int]],
                  warn: Notify) -> tuple[FeatureWriter, int, list[str]] | None:
    remedy = "rerun the command that started it to finish it, or pass `overwrite` to start again"
    try:
        writer = FeatureWriter.reopen(partial)
    except OSError as exc:
        if "lock" in str(exc).lower():
            raise UserError(f"{partial}: another `probe extract` is writing it; wait for it to finish") from exc
        warn(f"{partial} cannot be opened (interrupted while writing?); starting again from scratch")
        return None
    try:
        found = written_identity(writer.h5)
        if found.get("schema") != SCHEMA:
            warn(f"{partial} is not an unfinished probe feature file; starting again from scratch")
            writer.close()
            return None
        msg = _mismatch_message(partial, found, expected, remedy)
        if msg is None and int(found.get("batch_size", -1)) != expected["batch_size"]:
            msg = (f"{partial}: was started with `batch_size` {found.get('batch_size')}; resume with that "
                   "batch size (or without `batch_size`), or pass `overwrite` to start again")
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
            warn(f"{partial} was started on {found.get('device')} ({found.get('precision')}); this run "
                 f"uses {expected.get('device')} ({expected.get('precision')}): rows may differ in the last digits")
    except UserError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
        writer.close()
        warn(f"{partial} is damaged ({' '.join(str(exc).split())[:100]}); starting again from scratch")
        return None
    return writer, done, skipped


def _encoded_rows(spec: DatasetSpec, encoder: Encoder, rows: list[int], batch: Any,
                  dtype: str) -> dict[str, np.ndarray]:
    """Encode one batch: the datasets' values of its rows, features as stored."""
    import torch

    ids = spec.ids
    feats = encoder.encode(batch)
    arr = feats.detach().to("cpu", torch.float32).numpy().astype(dtype, copy=False)
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        row = ids[rows[int(np.flatnonzero(~finite)[0])]]
        hint = "; use `dtype` float32" if dtype == "float16" else "; check the weights"
        raise UserError(f"encoder {encoder.name} gave NaN or infinite features for row {row!r}{hint}")
    idx = np.asarray(rows, dtype=np.int64)
    return {"features": arr, "y": spec.y[idx], "a": spec.a[idx], "group": spec.group[idx],
            "split": spec.split[idx], "id": np.asarray([ids[i] for i in rows], dtype=object), "index": idx}


class _Chunks:
    """Encoded rows on their way into the file: appended and committed in chunks, so a kill
    loses at most ``commit_seconds`` or MAX_BUFFER_ROWS of work."""

    def __init__(self, writer: FeatureWriter, skipped: list[str], batches_done: int,
                 commit_seconds: float) -> None:
        self.writer = writer
        self.skipped = skipped
        self.done = batches_done
        self.commit_seconds = commit_seconds
        self.buffer: list[dict[str, np.ndarray]] = []
        self.buffered = 0
        self.last = time.monotonic()

    def add(self, rows: dict[str, np.ndarray]) -> None:
        self.buffer.append(rows)
        self.buffered += len(rows["index"])

    def batch_done(self) -> None:
        self.done += 1
        if self.buffered >= MAX_BUFFER_ROWS or time.monotonic() - self.last >= self.commit_seconds:
            self.commit()

    def commit(self) -> None:
        if self.buffer:
            rows = {k: np.concatenate([b[k] for b in self.buffer]) for k in self.buffer[0]}
            self.writer.append(rows)
            self.buffer.clear()
        self.writer.commit(batches_done=self.done, skipped=self.skipped)
        self.buffered = 0
        self.last = time.monotonic()


def _run(spec: DatasetSpec, encoder: Encoder, partial: Path, bounds: list[tuple[int, int]],
         batches_done: int, skipped: list[str], *, workers: int, dtype: str, skip_bad: bool,
         commit_seconds: float, progress: Progress) -> None:
    todo = bounds[batches_done:]
    ids = spec.ids
    loader = batches(spec, encoder, todo, workers)
    # Start the workers before opening the file: a forked worker would inherit the
    # HDF5 file lock and, if this process is killed, hold it until it notices (~5 s),
    # refusing the rerun that should resume.
    if workers > 0 and todo:
        # Forked workers share this process's pages copy-on-write, and every page the
        # model then writes to is copied once: with a large retained heap (see
        # tune_cpu_allocator) ~0.5 s on the first batch. Trimmed, it gets fresh pages.
        trim_heap()
    items = iter(loader)
    writer = FeatureWriter.reopen(partial)
    chunks = _Chunks(writer, skipped, batches_done, commit_seconds)
    finished = False
    progress.start(f"{spec.name} > {encoder.name}", total=sum(e - s for s, e in bounds),
                   completed=sum(e - s for s, e in bounds[:batches_done]))
    try:
        for rows, batch, bad in items:
            if bad and not skip_bad:
                i, item = bad[0]
                raise UserError(f"{item.what}: cannot read row {ids[i]!r} ({item.reason}); fix or remove "
                                "it, or pass `skip_bad` to leave such rows out")
            skipped.extend(ids[i] for i, _ in bad)
            if rows:
                chunks.add(_encoded_rows(spec, encoder, rows, batch, dtype))
            progress.advance(len(rows) + len(bad))
            chunks.batch_done()
        finished = True
    finally:
        # Whole batches already encoded are kept, whatever stopped the loop (Ctrl-C, a bad row).
        try:
            chunks.commit()
            if finished:
                writer.finish(batches_done=chunks.done, skipped=skipped)
        except (OSError, RuntimeError, ValueError):
            if finished:
                raise
        finally:
            writer.close()
            del items  # stops the workers
            progress.finish()
