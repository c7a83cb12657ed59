"""Reading and writing HDF5 feature files, the contract between stages (layout: :mod:`features.schema`).

Every problem with a file a user hands in is one UserError naming the file.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from base.errors import UserError
from base.outputs import (
    DiskFull,
    SpaceReserve,
    disk_full,
    looks_like_hdf5,
    no_space_message,
    special_kind,
)
from features.featureset import FeatureSet, check_split_codes, check_unique_names
from features.schema import (
    IDENTITY_ATTRS,
    LABEL_DATASETS,
    PROMPT_ATTR,
    PROMPT_DATASET,
    SCHEMA,
    SPLIT_NAMES,
    SPLITS,  # noqa: F401 - re-exported: stage 2 reads SPLITS from features.store
)


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_attrs(h5: h5py.File) -> dict[str, Any]:
    attrs: dict[str, Any] = {k: _decode(v) for k, v in h5.attrs.items()}
    for key in ("class_names", "group_names", "source", PROMPT_ATTR):
        if isinstance(attrs.get(key), str):
            try:
                attrs[key] = json.loads(attrs[key])
            except json.JSONDecodeError:
                pass
    return attrs


def open_feature_file(path: str | Path) -> h5py.File:
    """Open ``path`` read-only, turning every way it can fail into a UserError."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: no such file; check the path (features are written by `probe extract`)")
    if p.is_dir():
        raise UserError(f"{p}: is a folder, not a feature file; pass the .h5 file written by `probe extract`")
    try:
        with open(p, "rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise UserError(f"{p}: cannot be read ({exc.strerror}); check its permissions") from exc
    if not h5py.is_hdf5(p):
        raise UserError(f"{p}: not an HDF5 file; pass the .h5 file written by `probe extract`")
    try:
        return h5py.File(p, "r")
    except OSError as exc:
        raise UserError(f"{p}: HDF5 file is truncated or corrupted ({exc}); extract it again") from exc


def check_schema(h5: h5py.File, path: str | Path) -> dict[str, Any]:
    attrs = read_attrs(h5)
    schema = attrs.get("schema")
    if schema != SCHEMA:
        found = f"schema {schema!r}" if schema is not None else "no 'schema' attribute"
        raise UserError(
            f"{path}: HDF5 file has {found}, not {SCHEMA!r}; only files written by `probe extract` can be read"
        )
    return attrs


@contextlib.contextmanager
def malformed_is_user_error(path: str | Path) -> Iterator[None]:
    """Turn what h5py/numpy raise on a damaged or hand-edited file into one UserError.

    A corrupted file can fail anywhere (reading an attribute, a chunk, decoding a
    string); the user's remedy is the same in every case.
    """
    try:
        yield
    except UserError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError, IndexError, UnicodeDecodeError) as exc:
        reason = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise UserError(f"{path}: HDF5 file is corrupted or malformed ({reason}); extract it again") from exc


def read_features(path: str | Path, allow_incomplete: bool = False) -> FeatureSet:
    """Load and validate a feature file; every problem is a one-line UserError."""
    with open_feature_file(path) as h5, malformed_is_user_error(path):
        return _read_features(h5, path, allow_incomplete)


def _read_features(h5: h5py.File, path: str | Path, allow_incomplete: bool) -> FeatureSet:
    attrs = check_schema(h5, path)
    if not bool(attrs.get("complete", False)) and not allow_incomplete:
        written = attrs.get("rows_written", "?")
        raise UserError(
            f"{path}: extraction is incomplete ({written} rows written); rerun the same "
            "`probe extract` command to finish it, or pass `allow_incomplete`"
        )
    missing = [k for k in ("features", *LABEL_DATASETS) if k not in h5]
    if missing:
        raise UserError(f"{path}: missing dataset(s) {', '.join(missing)}; extract the file again")
    # An incomplete file (allowed explicitly) holds only its first rows_written rows.
    n_rows = int(attrs.get("rows_written", h5["y"].shape[0])) if not attrs.get("complete") else None
    sl = slice(None) if n_rows is None else slice(0, n_rows)
    feats = np.asarray(h5["features"][sl], dtype=np.float32)
    data = {k: h5[k][sl] for k in LABEL_DATASETS}
    lengths = {"features": feats.shape[0], **{k: len(v) for k, v in data.items()}}
    if len(set(lengths.values())) != 1:
        desc = ", ".join(f"{k}={v}" for k, v in lengths.items())
        raise UserError(f"{path}: datasets have different lengths ({desc}); the file is corrupted, extract it again")
    if feats.ndim != 2:
        raise UserError(f"{path}: 'features' must be 2-D (rows x dims), found shape {feats.shape}")
    if feats.shape[1] == 0:
        raise UserError(f"{path}: 'features' has no columns (shape {feats.shape}); nothing can be fitted on it, "
                        "extract the file again")
    bad = ~np.isfinite(feats).all(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise UserError(
            f"{path}: features contain NaN or infinity in {int(bad.sum())} row(s) (first: row {row}); "
            "re-extract those rows or drop them"
        )
    class_names = _name_list(path, attrs, "class_names")
    group_names = _name_list(path, attrs, "group_names")
    y = np.asarray(data["y"], dtype=np.int64)
    group = np.asarray(data["group"], dtype=np.int64)
    check_split_codes(data["split"], str(path))  # as stored: cast to int8 first, 256 would read as 0 (train)
    split = np.asarray(data["split"], dtype=np.int8)
    _check_codes(path, "y", y, len(class_names), "class_names")
    _check_codes(path, "group", group, len(group_names), "group_names")
    ids = np.array([_decode(i) for i in data["id"]], dtype=object)
    prompts = _prompt_embeddings(h5, path, attrs, len(class_names), feats.shape[1])
    return FeatureSet(
        features=feats,
        y=y,
        a=np.asarray(data["a"], dtype=np.int64),
        group=group,
        split=split,
        ids=ids,
        class_names=class_names,
        group_names=group_names,
        attrs=attrs,
        path=str(path),
        prompt_embeddings=prompts,
    )


def _prompt_embeddings(h5: h5py.File, path: str | Path, attrs: dict[str, Any], n_classes: int,
                       dim: int) -> np.ndarray | None:
    """The zero-shot classifier, when the file has one, checked against its classes and width."""
    if PROMPT_DATASET not in h5:
        return None
    emb = np.asarray(h5[PROMPT_DATASET][:], dtype=np.float32)
    meta = attrs.get(PROMPT_ATTR)
    if emb.shape != (n_classes, dim) or not isinstance(meta, dict) or "logit_scale" not in meta:
        raise UserError(f"{path}: {PROMPT_DATASET} has shape {emb.shape} for {n_classes} classes of {dim} "
                        f"features, or no `{PROMPT_ATTR}` attribute; extract the file again")
    return emb


def _name_list(path: str | Path, attrs: dict[str, Any], key: str) -> list[str]:
    names = attrs.get(key)
    if not isinstance(names, list) or not names:
        raise UserError(f"{path}: attribute {key} must be a non-empty JSON list of names; extract the file again")
    names = [str(n) for n in names]
    check_unique_names(names, key, str(path))
    return names


def _check_codes(path: str | Path, name: str, values: np.ndarray, n: int, names_attr: str) -> None:
    if n == 0:
        raise UserError(f"{path}: attribute {names_attr} is empty or missing; extract the file again")
    bad = (values < 0) | (values >= n)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise UserError(
            f"{path}: {name}={int(values[row])} at row {row} is outside {names_attr} (0..{n - 1}); the labels "
            "do not match the class list"
        )


def summarize(path: str | Path) -> dict[str, Any]:
    """What `probe info` shows: provenance and rows per split and group."""
    with open_feature_file(path) as h5, malformed_is_user_error(path):
        attrs = check_schema(h5, path)
        n = int(h5["y"].shape[0]) if "y" in h5 else 0
        split = h5["split"][:] if "split" in h5 else np.zeros(0, np.int8)
        group = h5["group"][:] if "group" in h5 else np.zeros(0, np.int64)
        dim = int(h5["features"].shape[1]) if "features" in h5 else 0
        dtype = str(h5["features"].dtype) if "features" in h5 else "?"
    group_names = [str(g) for g in attrs.get("group_names", [])]
    check_unique_names(group_names, "group_names", str(path))  # counted by name: a repeat would hide rows
    check_split_codes(split, str(path))  # a row of no split would be counted nowhere
    if len(group):  # a row of no group would be counted nowhere, and read_features refuses the file
        _check_codes(path, "group", group, len(group_names), "group_names")
    counts: dict[str, dict[str, int]] = {}
    for code, sname in SPLIT_NAMES.items():
        in_split = split == code
        counts[sname] = {
            (group_names[g] if 0 <= g < len(group_names) else str(g)): int(((group == g) & in_split).sum())
            for g in range(max(len(group_names), 1))
        }
    return {"path": str(path), "rows": n, "dim": dim, "dtype": dtype, "attrs": attrs, "counts": counts}



# ---------------------------------------------------------------------------
# Writer side: used by `probe extract` and `probe merge`.


def check_replaceable(path: Path, flag: str, command: str) -> None:
    """Refuse to write a feature file over ``path`` unless it is one (or is empty, or a damaged HDF5 file).

    `overwrite` replaces feature files; anything else there (a table, an image, a
    run's summary.json, someone's own HDF5 data, a device or a FIFO) is the user's and is
    never replaced.
    """
    kind = special_kind(path)
    if kind is not None:
        raise UserError(f"{flag} {path}: is {kind}; {command} writes a feature file (a regular file, written "
                        "beside it and renamed into place): choose a file name")
    if not path.is_file() or path.stat().st_size == 0:
        return
    if looks_like_hdf5(path):
        try:
            with h5py.File(path, "r", locking=False) as h5:
                schema = _decode(h5.attrs.get("schema"))
        except (OSError, RuntimeError, ValueError, KeyError):
            return  # a damaged feature file, e.g. killed while writing its header
        if schema == SCHEMA:
            return
        what = f"an HDF5 file with schema {schema!r}" if schema else "an HDF5 file that is not a probe feature file"
    else:
        what = "not a feature file (not HDF5)"
    raise UserError(f"{flag} {path}: exists and is {what}; {command} writes only over its own feature files, "
                    "even with `overwrite`: move it away or choose another name")

# Attributes stored as JSON strings because HDF5 attributes hold no lists or dicts.
JSON_ATTRS = ("class_names", "group_names", "source", "skipped", "shard_rows", PROMPT_ATTR)
# Rows per HDF5 chunk of the label datasets; features get chunks of about 512 KiB.
_LABEL_CHUNK = 4096


def encode_attr(key: str, value: Any) -> Any:
    if key in JSON_ATTRS or isinstance(value, (list, dict, tuple)):
        return json.dumps(value, default=str)
    if value is None:
        return ""
    return value


def decode_json_attr(value: Any, default: Any) -> Any:
    """Read one of the JSON attributes (``skipped``, ``shard_rows``) whatever form it arrived in."""
    value = _decode(value)
    if isinstance(value, str):
        try:
            return json.loads(value) if value else default
        except json.JSONDecodeError:
            return default
    return default if value is None else value


def written_identity(h5: h5py.File) -> dict[str, Any]:
    """The file's attributes plus ``features_dtype``, for :func:`identity_difference`."""
    found = read_attrs(h5)
    found["features_dtype"] = str(h5["features"].dtype) if "features" in h5 else None
    return found


def identity_difference(found: dict[str, Any], expected: dict[str, Any],
                        keys: tuple[str, ...] = IDENTITY_ATTRS) -> str | None:
    """Describe the first attribute in ``keys`` that differs, or None when all agree."""
    for key in keys:
        a, b = found.get(key), expected.get(key)
        if a != b:
            return f"{key} {_shown(a)} (this run: {_shown(b)})"
    return None


def _shown(value: Any, limit: int = 90) -> str:
    if value is None:
        return "(none)"
    text = str(value)
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _open_checked(path: Path, mode: str) -> h5py.File:
    """:func:`_open_for_writing`, a full disk as DiskFull."""
    try:
        return _open_for_writing(path, mode)
    except OSError as exc:
        if disk_full(exc):
            raise DiskFull(no_space_message(path)) from exc
        raise


def _open_for_writing(path: Path, mode: str) -> h5py.File:
    """h5py.File, falling back to no file locking where the filesystem has none (NFS, Lustre)."""
    # New files use the HDF5 1.8 format or later: attributes over 64 KiB (a long
    # `skipped` list) need its dense attribute storage; every HDF5 since 2008 reads it.
    kw: dict[str, Any] = {"libver": ("v108", "latest")} if mode == "w" else {}
    try:
        return h5py.File(path, mode, **kw)
    except OSError as exc:
        text = str(exc)
        if "lock" in text.lower() and ("errno = 38" in text or "not implemented" in text.lower()):
            return h5py.File(path, mode, locking=False, **kw)
        raise


class FeatureWriter:
    """Append rows to a feature file; ``commit`` makes them count, ``finish`` marks it complete.

    Rows become part of the file only at ``commit`` (``rows_written`` is the
    promise a resume relies on); anything past it is overwritten on resume.

    A full disk is a :class:`DiskFull` error naming the file. With a ``reserve``
    (:class:`base.outputs.SpaceReserve`) the file is then closed cleanly with every
    committed row intact: HDF5 needs free space to close a file after a failed
    write, and without it the process crashes at exit.
    """

    def __init__(self, h5: h5py.File, path: Path, reserve: SpaceReserve | None = None) -> None:
        self.h5 = h5
        self.path = path
        self.reserve = reserve
        self.failed = False  # set by a full disk: the file is closed, nothing more is written
        self._end: int | None = None  # rows appended so far, committed or not
        # Datasets stay open while the writer is: closing one flushes its chunk cache, and a
        # write that fails there (a full disk) is swallowed by h5py's deallocator unseen.
        self._datasets: dict[str, Any] = {}

    def _dataset(self, key: str) -> Any:
        if key not in self._datasets:
            self._datasets[key] = self.h5[key]
        return self._datasets[key]

    @classmethod
    def create(cls, path: str | Path, attrs: dict[str, Any], dim: int, dtype: str = "float32",
               reserve: SpaceReserve | None = None) -> FeatureWriter:
        path = Path(path)
        writer = cls(_open_checked(path, "w"), path, reserve)
        try:
            with writer._writing():
                h5 = writer.h5
                itemsize = np.dtype(dtype).itemsize
                feat_rows = max(1, min(4096, (512 * 1024) // max(1, dim * itemsize)))
                h5.create_dataset("features", shape=(0, dim), maxshape=(None, dim), dtype=dtype,
                                  chunks=(feat_rows, max(1, dim)))
                for key, dt in (("y", np.int64), ("a", np.int64), ("group", np.int64), ("split", np.int8),
                                ("index", np.int64)):
                    h5.create_dataset(key, shape=(0,), maxshape=(None,), dtype=dt, chunks=(_LABEL_CHUNK,))
                h5.create_dataset("id", shape=(0,), maxshape=(None,), dtype=h5py.string_dtype("utf-8"),
                                  chunks=(_LABEL_CHUNK,))
                writer.set_attrs({**attrs, "schema": SCHEMA, "complete": False, "rows_written": 0})
                h5.flush()
        except BaseException:
            writer.close()
            raise
        return writer

    @classmethod
    def reopen(cls, path: str | Path, reserve: SpaceReserve | None = None) -> FeatureWriter:
        """Open an unfinished file to continue it; OSError if HDF5 cannot open it."""
        path = Path(path)
        return cls(_open_checked(path, "r+"), path, reserve)

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Around every HDF5 write: a full disk closes the file (see the class) and raises DiskFull."""
        try:
            yield
        except (OSError, RuntimeError, ValueError) as exc:
            if not disk_full(exc):
                raise
            self._give_up()
            raise DiskFull(no_space_message(self.path)) from exc

    @property
    def attrs(self) -> dict[str, Any]:
        return read_attrs(self.h5)

    @property
    def rows_written(self) -> int:
        return int(_decode(self.h5.attrs.get("rows_written", 0)))

    def set_attrs(self, attrs: dict[str, Any]) -> None:
        for key, value in attrs.items():
            self.h5.attrs[key] = encode_attr(key, value)

    def write_prompts(self, embeddings: np.ndarray) -> None:
        """Store the zero-shot classifier ((C, D) rows; its description goes in the attributes)."""
        if PROMPT_DATASET in self.h5:
            del self.h5[PROMPT_DATASET]
        self.h5.create_dataset(PROMPT_DATASET, data=np.asarray(embeddings, dtype=np.float32))
        self.h5.flush()

    def truncate(self, rows: int) -> None:
        """Drop rows past ``rows`` (left by an interrupted commit)."""
        self._end = rows
        with self._writing():
            for key in ("features", *LABEL_DATASETS, "index"):
                ds = self._dataset(key)
                if ds.shape[0] != rows:
                    ds.resize(rows, axis=0)

    def append(self, rows: dict[str, np.ndarray]) -> None:
        """Write ``rows`` (features, y, a, group, split, id, index) after the committed ones."""
        start = self.rows_written if self._end is None else self._end
        n = len(rows["id"])
        if n == 0:
            return
        check_split_codes(rows["split"], str(self.path))  # the int8 column would wrap 256 to 0 (train)
        self._check_space(rows)
        with self._writing():
            for key, value in rows.items():
                ds = self._dataset(key)
                ds.resize(start + n, axis=0)
                ds[start:start + n] = value
        self._end = start + n

    def _check_space(self, rows: dict[str, np.ndarray]) -> None:
        """Stop before a write the disk has no room for: HDF5 handles a failed write badly
        (see the class), so a full disk is met here, with the file still in order, when it can be.

        Room for the rows, one fresh chunk of every dataset (HDF5 allocates whole
        chunks) and a MiB of metadata; the reserve covers what that misses.
        """
        try:
            st = os.statvfs(self.path.parent)
        except (OSError, AttributeError):
            return
        raw = sum(v.nbytes if v.dtype != object else sum(len(str(x)) + 16 for x in v) for v in rows.values())
        chunks = sum(self._dataset(k).chunks[0] * self._dataset(k).dtype.itemsize
                     * int(np.prod(self._dataset(k).shape[1:])) for k in rows if self._dataset(k).chunks)
        if st.f_bavail * st.f_frsize < raw + chunks + (1 << 20):
            self._give_up()
            raise DiskFull(no_space_message(self.path))

    def _give_up(self) -> None:
        """The disk is full: hand back the reserve so that HDF5 can close the file in order."""
        self.failed = True
        if self.reserve is not None:
            self.reserve.release()
        with contextlib.suppress(Exception):
            self.h5.close()

    def commit(self, **attrs: Any) -> None:
        """Flush the appended rows, then advance ``rows_written`` (and ``attrs``) and flush again.

        Two flushes so that a kill between them leaves the old, still true, rows_written.
        """
        with self._writing():
            self.h5.flush()
            rows = self.rows_written if self._end is None else self._end
            self.set_attrs({**attrs, "rows_written": rows})
            self.h5.flush()

    def finish(self, **attrs: Any) -> None:
        self.commit(**attrs)
        with self._writing():
            self.h5.attrs["complete"] = True
            self.h5.flush()
        self.close()

    def close(self) -> None:
        if not self.failed and self.h5.id.valid:
            with self._writing():
                self.h5.close()
