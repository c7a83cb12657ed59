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

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from base.errors import UserError, either
from base.io import check_writable_dir
from base.outputs import (
    DEFAULT_RESERVE_BYTES,
    DiskFull,
    SpaceReserve,
    link_target,
    lock_path,
    no_space_message,
    output_lock,
)
from base.progress import NoProgress, Notify, Progress, ignore
from base.version import code_version
from features.datasets.base import DatasetSpec
from features.datasets.registry import dataset_info
from features.encoders.core import Encoder
from features.encoders.registry import default_encoder, encoder_hints
from features.encoders.registry import find as find_encoder
from features.fingerprints import ItemsFingerprint, changed_items, rows_fingerprint
from features.loading import batches, default_workers, trim_heap
from features.prompts import ClassPrompts, class_prompts
from features.schema import FEATURE_DTYPES, PROMPT_ATTR, SCHEMA, WRITE_IDENTITY
from features.store import (
    FeatureWriter,
    check_replaceable,
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


def shard_span(n_rows: int, batch_size: int, shard: tuple[int, int] | None = None) -> list[int]:
    """[start, stop) of the rows a shard covers; an empty shard (more shards than batches)
    sits where its batches would be, so that the shards tile the dataset whatever N is."""
    bounds = batch_bounds(n_rows, batch_size)
    if shard is None:
        return [0, n_rows]
    i, n = shard
    lo, hi = i * len(bounds) // n, (i + 1) * len(bounds) // n
    start = bounds[lo][0] if lo < len(bounds) else n_rows
    return [start, bounds[hi - 1][1] if hi > lo else start]


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


def check_settings(batch_size: int | None = None, workers: int | None = None,
                   dtype: str = FEATURE_DTYPES[0]) -> None:
    """The values that need no dataset or model: checked before either is loaded."""
    check_dtype(dtype)
    if batch_size is not None and batch_size < 1:
        raise UserError(f"`batch_size` {batch_size}: must be at least 1")
    if workers is not None and workers < 0:
        raise UserError(f"`workers` {workers}: must be 0 (load in the main process) or more")


def check_output(out: Path) -> None:
    """Refuse an output path that cannot become a feature file, before any work is done."""
    if out.is_dir():
        raise UserError(f"`out` {out}: is a folder; give a file name such as {out / 'features.h5'}")
    check_writable_dir(out.parent if str(out.parent) else Path("."), "`out`")


def check_replaced(out: Path) -> None:
    """Refuse an `out` (or its unfinished file) that holds something other than a feature
    file: the dataset's own table or images, a run folder's files, the user's notes."""
    for path in (out, partial_path(out)):
        check_replaceable(path, "`out`", "probe extract")


def extraction_lock(out: Path) -> contextlib.AbstractContextManager[SpaceReserve]:
    """Held while ``out`` is extracted (reentrant: a caller may take it before loading the model)."""
    return output_lock(out, f"`out` {out}: another `probe extract` is writing it (it holds "
                            f"{lock_path(out).name}); wait for it to finish, or choose another `out`")


def stopped(out: Path, overwrite: bool = False) -> str:
    """After an extraction into ``out`` stopped (interrupted, disk full): what is kept and
    how to go on from it (`overwrite` would discard it: a resume is the same command
    without it). An unfinished file with no rows in it is removed: nothing to resume."""
    partial = partial_path(out)
    rows = _committed_rows(partial)
    if not rows:
        if rows == 0:
            partial.unlink(missing_ok=True)
        return f"nothing was kept ({out.name} {'is unchanged' if out.exists() else 'was not created'})"
    if out.exists():
        how = f"move {out.name} (unchanged) away, then rerun the same command without `overwrite` to resume"
    elif overwrite:
        how = "rerun the same command without `overwrite` to resume"
    else:
        how = "rerun the same command to resume"
    return f"the {rows} rows written so far are kept in {partial.name}: {how}"


def _committed_rows(partial: Path) -> int | None:
    try:
        with h5py.File(partial, "r", locking=False) as h5:
            return int(h5.attrs.get("rows_written", 0))
    except (OSError, RuntimeError, ValueError, TypeError):
        return None


def choose_encoder(dataset: str, modality: str, encoder: str | None = None) -> str:
    """``encoder`` if given, else the dataset's default encoder, else the default for its modality."""
    if encoder is not None:
        return encoder
    chosen = dataset_info(dataset).default_encoder or default_encoder(modality)
    if chosen is None:
        hints = ", or ".join(f"`encoder` {hint}" for hint in encoder_hints(modality))
        raise UserError(f"`encoder` is required for {modality} dataset {dataset!r}: e.g. {hints}")
    return chosen


def _modality_error(name: str, modality: str, spec: DatasetSpec) -> UserError:
    return UserError(f"`encoder` {name} encodes {modality}s but dataset {spec.name!r} has {spec.modality}s; "
                     f"choose a {spec.modality} encoder (or `tower` {spec.modality})")


def check_encoder_choice(name: str, spec: DatasetSpec, tower: str | None = None) -> None:
    """Refuse, from its family's declaration, an encoder that cannot encode the dataset's
    items: before the model is loaded (which can take a minute)."""
    family = find_encoder(name)
    if "tower" in family.option_names:
        modality = tower or (spec.modality if spec.modality in family.modalities else family.modalities[0])
    else:
        modality = family.modalities[0]
    if modality != spec.modality:
        raise _modality_error(name, modality, spec)


def _check_pair(spec: DatasetSpec, encoder: Encoder) -> None:
    """Refuse an encoder that cannot encode the dataset's items."""
    if encoder.modality != spec.modality:
        raise _modality_error(encoder.name, encoder.modality, spec)
    if spec.modality == "text" and len(spec) and isinstance(spec.items[0], tuple) and not encoder.supports_pairs:
        raise UserError(f"`encoder` {encoder.name} encodes single texts but dataset {spec.name!r} has sentence "
                        "pairs; use an hf: encoder (or minilm)")


@dataclass
class _Job:
    """What every step of one extraction into ``out`` shares."""

    spec: DatasetSpec
    out: Path
    expected: dict[str, Any]  # the attributes that identify what the file holds
    bounds: list[tuple[int, int]]  # the batches of this run
    reserve: SpaceReserve
    warn: Notify
    zero_shot: ClassPrompts | None = None  # the class prompts' embeddings, stored with the rows

    @property
    def partial(self) -> Path:
        return partial_path(self.out)

    @property
    def ids(self) -> np.ndarray:
        return np.asarray(self.spec.ids, dtype=object)


class OtherExtraction(UserError):
    """``out`` (or its unfinished file) holds rows other than this extraction would write:
    refused before anything is encoded; ``overwrite`` replaces it."""


def _files_changed(path: Path, remedy: str) -> OtherExtraction:
    return OtherExtraction(f"{path}: the dataset's files changed since its rows were written (an image's size or "
                           f"modification time, or a text); {remedy}")


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
    ``note`` what it may like to (a resumed file). The result says what was done. A full
    disk is one UserError saying what was kept.
    """
    t0 = time.perf_counter()
    out = link_target(out)  # the link stays; the file it names is replaced
    check_settings(batch_size, workers, dtype)
    _check_pair(spec, encoder)
    check_output(out)
    if class_names is not None and not prompts:
        raise UserError("`class_names` are the names filled into `prompts`; give `prompts` too")
    check_replaced(out)
    zero_shot = class_prompts(encoder, spec.class_names, prompts, class_names) if prompts else None
    workers = default_workers(encoder.device.type) if workers is None else workers
    with extraction_lock(out) as reserve:
        if batch_size is None:
            resumed = None if overwrite else _partial_batch_size(partial_path(out))
            batch_size = resumed or encoder.default_batch_size
        expected = {
            "schema": SCHEMA, "dataset": spec.name, **encoder.info(),
            "class_names": spec.class_names, "group_names": spec.group_names, "source": spec.source,
            "rows_sha256": rows_fingerprint(spec), "total_rows": len(spec), "batch_size": batch_size,
            "shard": f"{shard[0]}/{shard[1]}" if shard else "", "shard_rows": shard_span(len(spec), batch_size, shard),
            "features_dtype": dtype, PROMPT_ATTR: zero_shot.attribute() if zero_shot else None,
        }
        job = _Job(spec, out, expected, batch_bounds(len(spec), batch_size, shard), reserve, warn, zero_shot)
        if out.exists() and not overwrite:
            return _existing_output(job, t0)
        try:
            reserve.fill(DEFAULT_RESERVE_BYTES)
            resumed_from, skipped = _write(job, encoder, overwrite, note, dict(
                workers=workers, dtype=dtype, skip_bad=skip_bad, commit_seconds=commit_seconds,
                progress=progress or NoProgress()))
        except DiskFull as exc:
            raise DiskFull(f"{no_space_message(job.partial)}; {stopped(out, overwrite)}") from exc
        os.replace(job.partial, out)
    rows = sum(e - s for s, e in job.bounds) - len(skipped)
    if skipped:
        warn(f"{len(skipped)} unreadable row(s) skipped (`skip_bad`), listed in the file's "
             f"'skipped' attribute; first: {skipped[0]}")
    return ExtractResult(out, "resumed" if resumed_from else "written", rows, encoder.dim,
                         time.perf_counter() - t0, list(skipped), resumed_from)


def _write(job: _Job, encoder: Encoder, overwrite: bool, note: Notify, run: dict[str, Any]) -> tuple[int, list[str]]:
    """Start or continue the unfinished file and encode what is left into it: (rows it had, ids skipped)."""
    writer, state = _open_partial(job, overwrite)
    resumed_from = writer.rows_written
    writer.close()  # reopened by _run once its worker processes exist (see there)
    if resumed_from or state.done:
        note(f"resuming {job.partial}: {resumed_from} rows already written")
    try:
        _run(job, encoder, state, **run)
    except _NothingReadable:
        # Kept, it would resume as a finished file of no rows once the images are fixed.
        job.partial.unlink(missing_ok=True)
        raise
    except UserError:
        if _committed_rows(job.partial) == 0:  # stopped at its first batch (a bad image): nothing to resume
            job.partial.unlink(missing_ok=True)
        raise
    return resumed_from, state.skipped


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


def _existing_output(job: _Job, t0: float) -> ExtractResult:
    out, expected = job.out, job.expected
    remedy = "pass `overwrite` to replace it, or choose another `out`"
    try:
        h5 = open_feature_file(out)
    except UserError as exc:
        raise OtherExtraction(f"{out}: exists and is not a readable feature file; {remedy}") from exc
    try:
        with h5:
            found = written_identity(h5)
            if found.get("schema") != SCHEMA:
                raise OtherExtraction(f"{out}: exists and is not a probe feature file; {remedy}")
            msg = _mismatch_message(out, found, expected, remedy)
            if msg:
                raise OtherExtraction(msg)
            if not bool(found.get("complete", False)):
                raise OtherExtraction(f"{out}: exists but is incomplete; {remedy}")
            skipped = [str(s) for s in decode_json_attr(found.get("skipped"), [])]
            want = _expected_ids(job.ids, job.bounds, set(skipped))
            n = int(h5["features"].shape[0])
            if n != len(want) or not np.array_equal(_ids_of(h5, n), want):
                raise OtherExtraction(f"{out}: holds other rows than dataset {expected['dataset']!r} gives now; {remedy}")
            if changed_items(found, ItemsFingerprint(job.spec).add(job.bounds)):
                raise _files_changed(out, "pass `overwrite` to extract it again")
            dim = int(h5["features"].shape[1])
    except UserError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise OtherExtraction(f"{out}: exists and cannot be read as a feature file ({exc}); {remedy}") from exc
    return ExtractResult(out, "already complete", n, dim, time.perf_counter() - t0, skipped)


@dataclass
class _State:
    """Where an unfinished file stands: batches done, ids skipped, fingerprint of its rows' files."""

    done: int
    skipped: list[str]
    items: ItemsFingerprint


def _open_partial(job: _Job, overwrite: bool) -> tuple[FeatureWriter, _State]:
    """Continue the unfinished file when it belongs to this run, else start it afresh."""
    partial, expected = job.partial, job.expected
    if partial.exists() and overwrite:
        partial.unlink()
    if partial.exists():
        state = _resume_state(job)
        if state is not None:
            return state
        partial.unlink()
    items = ItemsFingerprint(job.spec)
    # A file without prompts has no prompts attribute at all, like every file before them.
    attrs = {k: v for k, v in expected.items() if k != "features_dtype" and not (k == PROMPT_ATTR and v is None)}
    attrs.update(created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), **code_version(),
                 skipped=[], batches_done=0, items_sha256=items.hexdigest())
    try:
        writer = FeatureWriter.create(partial, attrs, expected["dim"], expected["features_dtype"], job.reserve)
        if job.zero_shot is not None:
            writer.write_prompts(job.zero_shot.embeddings)
    except OSError as exc:
        raise UserError(f"{partial}: cannot be created ({exc}); check the `out` folder") from exc
    return writer, _State(0, [], items)


def _resume_state(job: _Job) -> tuple[FeatureWriter, _State] | None:
    partial, expected, warn = job.partial, job.expected, job.warn
    remedy = "rerun the command that started it to finish it, or pass `overwrite` to start again"
    try:
        writer = FeatureWriter.reopen(partial, job.reserve)
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
            raise OtherExtraction(msg)
        rows = writer.rows_written
        done = int(found.get("batches_done", 0))
        skipped = [str(s) for s in decode_json_attr(found.get("skipped"), [])]
        want = _expected_ids(job.ids, job.bounds[:done], set(skipped))
        if done > len(job.bounds) or rows != len(want) or not np.array_equal(_ids_of(writer.h5, rows), want):
            writer.close()
            raise OtherExtraction(f"{partial}: its rows do not line up with this dataset; {remedy}")
        items = ItemsFingerprint(job.spec).add(job.bounds[:done])
        if changed_items(found, items):
            writer.close()
            raise _files_changed(partial, "pass `overwrite` to start again")
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
    return writer, _State(done, skipped, items)


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


class _NothingReadable(UserError):
    """`skip_bad` skipped every row: there is nothing to write."""


class _Chunks:
    """Encoded rows on their way into the file: appended and committed in chunks, so a kill
    loses at most ``commit_seconds`` or MAX_BUFFER_ROWS of work. Each commit records the
    batches done, the ids skipped and the fingerprint of the files of those batches."""

    def __init__(self, writer: FeatureWriter, job: _Job, state: _State, commit_seconds: float) -> None:
        self.writer = writer
        self.bounds = job.bounds
        self.state = state
        self.commit_seconds = commit_seconds
        self.buffer: list[dict[str, np.ndarray]] = []
        self.buffered = 0
        self.rows = writer.rows_written  # in the file or on their way
        self.last = time.monotonic()

    def add(self, rows: dict[str, np.ndarray]) -> None:
        self.buffer.append(rows)
        self.buffered += len(rows["index"])
        self.rows += len(rows["index"])

    def batch_done(self) -> None:
        self.state.items.add(self.bounds[self.state.done:self.state.done + 1])
        self.state.done += 1
        if self.buffered >= MAX_BUFFER_ROWS or time.monotonic() - self.last >= self.commit_seconds:
            self.commit()

    def commit(self) -> None:
        if self.buffer:
            rows = {k: np.concatenate([b[k] for b in self.buffer]) for k in self.buffer[0]}
            self.writer.append(rows)
            self.buffer.clear()
        self.writer.commit(batches_done=self.state.done, skipped=self.state.skipped,
                           items_sha256=self.state.items.hexdigest())
        self.buffered = 0
        self.last = time.monotonic()


def _run(job: _Job, encoder: Encoder, state: _State, *, workers: int, dtype: str, skip_bad: bool,
         commit_seconds: float, progress: Progress) -> None:
    spec, bounds, skipped = job.spec, job.bounds, state.skipped
    todo = bounds[state.done:]
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
    writer = FeatureWriter.reopen(job.partial, job.reserve)
    chunks = _Chunks(writer, job, state, commit_seconds)
    finished = False
    progress.start(f"{spec.name} > {encoder.name}", total=sum(e - s for s, e in bounds),
                   completed=sum(e - s for s, e in bounds[:state.done]))
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
        if skipped and not chunks.rows:
            raise _NothingReadable(f"every row is unreadable: all {len(skipped)} were skipped (`skip_bad`; first: "
                                   f"{skipped[0]}); nothing was written: check the image paths and files")
        finished = True
    finally:
        # Whole batches already encoded are kept, whatever stopped the loop (Ctrl-C, a
        # bad row); after a full disk the writer has closed the file and nothing more goes in.
        try:
            if not writer.failed:
                chunks.commit()
                if finished:
                    writer.finish(batches_done=state.done, skipped=skipped)
        except (OSError, RuntimeError, ValueError, UserError):
            if finished:
                raise
        finally:
            writer.close()
            del items  # stops the workers
            progress.finish()
