"""`probe merge`: join the shards of one extraction into the file an unsharded run writes.

Shards are checked before anything is written: same producer and rows (the write
identity), all complete, numbered i/N with every i present once, and together
covering every row exactly once. Rows are written in the unsharded order (by the
``index`` dataset), into a temporary file renamed over OUT at the end.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from base.errors import UserError
from base.io import NoSpace, atomic_path, check_writable_dir
from base.outputs import (
    DEFAULT_RESERVE_BYTES,
    DiskFull,
    lock_path,
    output_lock,
    same_file,
)
from base.progress import NoProgress, Progress
from features.schema import LABEL_DATASETS, PROMPT_DATASET, WRITE_IDENTITY
from features.store import (
    FeatureWriter,
    check_replaceable,
    decode_json_attr,
    identity_difference,
    malformed_is_user_error,
    open_feature_file,
    written_identity,
)

COPY_ROWS = 65536  # rows copied per step: bounded memory whatever the shard size


@dataclass
class MergeResult:
    path: Path
    rows: int
    shards: int
    skipped: list[str]
    seconds: float


@dataclass
class _Shard:
    path: Path
    attrs: dict[str, Any]
    index: int
    count: int
    start: int
    stop: int
    rows: int
    dim: int
    skipped: list[str]


def _inspect(path: Path) -> _Shard:
    with open_feature_file(path) as h5, malformed_is_user_error(path):
        attrs = written_identity(h5)
        if attrs.get("schema") is None or "features" not in h5 or "index" not in h5:
            raise UserError(f"{path}: not a shard written by `probe extract --shard i/N`")
        if not bool(attrs.get("complete", False)):
            raise UserError(f"{path}: shard is incomplete ({attrs.get('rows_written', '?')} rows written); rerun "
                            "its `probe extract` command to finish it")
        shard = str(attrs.get("shard") or "")
        try:
            i_text, n_text = shard.split("/")
            index, count = int(i_text), int(n_text)
        except ValueError:
            # Literally --shard: it is `probe extract`'s flag, and only the running command's are translated.
            raise UserError(f"{path}: is not a shard (no 'i/N' shard attribute); merge only files written "
                            "with --shard") from None
        start, stop = (int(v) for v in decode_json_attr(attrs.get("shard_rows"), [0, 0]))
        rows = int(h5["features"].shape[0])
        idx = h5["index"][:]
        skipped = [str(s) for s in decode_json_attr(attrs.get("skipped"), [])]
        if len(idx) != rows or any(h5[k].shape[0] != rows for k in LABEL_DATASETS):
            raise UserError(f"{path}: datasets have different lengths; extract this shard again")
        if rows and (np.any(np.diff(idx) <= 0) or idx[0] < start or idx[-1] >= stop):
            raise UserError(f"{path}: row indices are not increasing inside its rows {start}..{stop - 1}; "
                            "extract this shard again")
        if rows + len(skipped) != stop - start:
            raise UserError(f"{path}: holds {rows} rows + {len(skipped)} skipped, but its shard spans "
                            f"{stop - start}; extract this shard again")
        return _Shard(path, attrs, index, count, start, stop, rows, int(h5["features"].shape[1]), skipped)


def _check(shards: list[_Shard]) -> None:
    first = shards[0]
    keys = tuple(k for k in WRITE_IDENTITY if k != "shard") + ("total_rows", "batch_size")
    for sh in shards[1:]:
        diff = identity_difference(sh.attrs, first.attrs, keys)
        if diff is not None:
            diff = diff.replace("(this run:", f"({first.path.name}:")
            raise UserError(f"{sh.path}: cannot be merged with {first.path}: different {diff}")
        if sh.count != first.count:
            raise UserError(f"{sh.path}: is shard {sh.index}/{sh.count} but {first.path} is "
                            f"{first.index}/{first.count}; merge shards of one split into N")
    seen: dict[int, Path] = {}
    for sh in shards:
        if sh.index in seen:
            raise UserError(f"{sh.path}: is shard {sh.index}/{sh.count}, like {seen[sh.index]}; pass each shard once")
        seen[sh.index] = sh.path
    missing = [i for i in range(first.count) if i not in seen]
    if missing:
        listed = ", ".join(f"{i}/{first.count}" for i in missing[:5])
        raise UserError(f"missing shard(s) {listed}; extract them with --shard and pass every shard to merge")
    expect = 0
    for sh in sorted(shards, key=lambda s: s.index):
        if sh.start != expect:
            raise UserError(f"{sh.path}: starts at row {sh.start}, expected {expect}; the shards do not tile "
                            "the dataset (extracted with different batch sizes?)")
        expect = sh.stop
    total = int(first.attrs.get("total_rows", -1))
    if expect != total:
        raise UserError(f"shards cover rows 0..{expect - 1} of {total}; extract the rest")


def merge(out: str | Path, shard_paths: Sequence[str | Path], *, overwrite: bool = False,
          progress: Progress | None = None) -> MergeResult:
    """Join ``shard_paths`` into ``out``; ``progress`` follows the rows copied."""
    t0 = time.perf_counter()
    out = Path(out)
    paths = [Path(p) for p in shard_paths]
    if not paths:
        raise UserError("probe merge needs the shard files to join: probe merge OUT.h5 SHARD.h5 ...")
    if out.is_dir():
        raise UserError(f"{out}: is a folder; give the merged file's name, e.g. {out / 'features.h5'}")
    if any(same_file(p, out) for p in paths):
        raise UserError(f"{out}: is also one of the shards; write the merged file under another name")
    check_writable_dir(out.parent if str(out.parent) else Path("."), "OUT.h5")
    check_replaceable(out, "OUT.h5", "probe merge")
    if out.exists() and not overwrite:
        raise UserError(f"{out}: already exists; pass `overwrite` to replace it")
    shards = sorted((_inspect(p) for p in paths), key=lambda s: s.index)
    _check(shards)
    first = shards[0]
    skipped = [s for sh in shards for s in sh.skipped]
    # items_sha256 covers one shard's rows (and maybe another machine's file times): not the merged file's.
    attrs = {k: v for k, v in first.attrs.items()
             if k not in ("features_dtype", "schema", "complete", "rows_written", "items_sha256")}
    attrs.update(shard="", shard_rows=[0, int(first.attrs["total_rows"])], skipped=skipped,
                 batches_done=sum(int(sh.attrs.get("batches_done", 0)) for sh in shards),
                 created=min(str(sh.attrs.get("created", "")) for sh in shards),
                 merged_from=[sh.path.name for sh in shards])
    dtype = str(first.attrs["features_dtype"])
    progress = progress or NoProgress()
    busy = f"{out}: another `probe merge` is writing it (it holds {lock_path(out).name}); wait for it to finish"
    with output_lock(out, busy) as reserve, atomic_path(out) as tmp:
        reserve.fill(DEFAULT_RESERVE_BYTES)
        progress.start(f"merging into {out.name}", total=sum(sh.rows for sh in shards))
        try:
            writer = FeatureWriter.create(tmp, attrs, first.dim, dtype, reserve)
            try:
                # Shards agree on their prompts (the write identity), so the first one's classifier is theirs.
                with h5py.File(first.path, "r") as h5, malformed_is_user_error(first.path):
                    if PROMPT_DATASET in h5:
                        writer.write_prompts(h5[PROMPT_DATASET][:])
                rows = _copy_rows(shards, writer, progress)
                writer.finish()
            finally:
                writer.close()
        except DiskFull as exc:
            raise NoSpace(out) from exc
        finally:
            progress.finish()
    return MergeResult(out, rows, len(shards), skipped, time.perf_counter() - t0)


def _copy_rows(shards: list[_Shard], writer: FeatureWriter, progress: Progress) -> int:
    """Append every shard's rows, in shard order, a bounded block at a time."""
    rows = 0
    for sh in shards:
        with h5py.File(sh.path, "r") as h5, malformed_is_user_error(sh.path):
            for s in range(0, sh.rows, COPY_ROWS):
                e = min(s + COPY_ROWS, sh.rows)
                block = {k: h5[k][s:e] for k in ("features", *LABEL_DATASETS, "index")}
                block["id"] = np.asarray([v.decode("utf-8") if isinstance(v, bytes) else v
                                          for v in block["id"]], dtype=object)
                writer.append(block)
                writer.commit()
                rows += e - s
                progress.advance(e - s)
    return rows
