"""The feature file's writer against its reader: round trip, commits, and the schema checks."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from base.errors import UserError
from features.store import (
    IDENTITY_ATTRS,
    SCHEMA,
    FeatureWriter,
    decode_json_attr,
    identity_difference,
    read_features,
    summarize,
)
from tests.h5craft import CLASS_NAMES, GROUP_NAMES, toy_arrays

ATTRS = {"dataset": "toy", "encoder": "enc", "weights": "w sha256:00", "preprocess": "none",
         "class_names": CLASS_NAMES, "group_names": GROUP_NAMES, "created": "2026-01-01T00:00:00",
         "probe_version": "test", "source": {"made_by": "test_store"}}


def _rows(arrays: dict[str, np.ndarray], s: int, e: int) -> dict[str, np.ndarray]:
    rows = {k: v[s:e] for k, v in arrays.items()}
    rows["id"] = np.asarray([f"row{i}" for i in range(s, e)], dtype=object)
    rows["index"] = np.arange(s, e, dtype=np.int64)
    return rows


def _write(path: Path, arrays: dict[str, np.ndarray], *, finish: bool = True, chunk: int = 10,
           dtype: str = "float32") -> Path:
    n, dim = arrays["features"].shape
    w = FeatureWriter.create(path, ATTRS, dim, dtype)
    try:
        for s in range(0, n, chunk):
            w.append(_rows(arrays, s, min(s + chunk, n)))
            w.commit(batches_done=s // chunk + 1)
        if finish:
            w.finish(skipped=["lost.jpg"])
    finally:
        w.close()
    return path


def test_round_trip(tmp_path: Path) -> None:
    arrays = toy_arrays()
    fs = read_features(_write(tmp_path / "f.h5", arrays))
    np.testing.assert_array_equal(fs.features, arrays["features"])
    for key in ("y", "a", "group", "split"):
        np.testing.assert_array_equal(getattr(fs, key), arrays[key])
        assert getattr(fs, key).dtype == arrays[key].dtype
    assert list(fs.ids) == [f"row{i}" for i in range(len(arrays["y"]))]
    assert fs.class_names == CLASS_NAMES and fs.group_names == GROUP_NAMES
    assert fs.attrs["schema"] == SCHEMA and fs.attrs["complete"] is True
    assert fs.attrs["rows_written"] == len(arrays["y"]) and fs.attrs["source"] == {"made_by": "test_store"}
    assert decode_json_attr(fs.attrs["skipped"], []) == ["lost.jpg"]
    prov = fs.provenance()
    assert prov["encoder"] == "enc" and prov["rows"] == len(arrays["y"]) and prov["dim"] == arrays["features"].shape[1]


def test_float16_round_trip(tmp_path: Path) -> None:
    arrays = toy_arrays()
    path = _write(tmp_path / "h.h5", arrays, dtype="float16")
    with h5py.File(path) as h5:
        assert h5["features"].dtype == np.float16
    fs = read_features(path)
    assert fs.features.dtype == np.float32
    np.testing.assert_array_equal(fs.features, arrays["features"].astype(np.float16).astype(np.float32))


def test_summarize_counts_rows(tmp_path: Path) -> None:
    arrays = toy_arrays(n_per_group_split=3)
    s = summarize(_write(tmp_path / "f.h5", arrays))
    assert s["rows"] == len(arrays["y"]) and s["dim"] == arrays["features"].shape[1]
    assert s["counts"]["train"] == {g: 3 for g in GROUP_NAMES}
    assert s["attrs"]["encoder"] == "enc"


def test_incomplete_file_refused_unless_allowed(tmp_path: Path) -> None:
    arrays = toy_arrays()
    path = tmp_path / "part.h5"
    w = FeatureWriter.create(path, ATTRS, arrays["features"].shape[1])
    w.append(_rows(arrays, 0, 20))
    w.commit()
    w.append(_rows(arrays, 20, 30))  # appended but never committed: not part of the file
    w.close()
    with pytest.raises(UserError, match=r"part\.h5.*incomplete \(20 rows"):
        read_features(path)
    fs = read_features(path, allow_incomplete=True)
    np.testing.assert_array_equal(fs.features, arrays["features"][:20])
    assert list(fs.ids) == [f"row{i}" for i in range(20)]
    # Reopened, truncated to what was committed, continued: the same as one pass.
    w = FeatureWriter.reopen(path)
    assert w.rows_written == 20
    w.truncate(20)
    w.append(_rows(arrays, 20, len(arrays["y"])))
    w.finish()
    np.testing.assert_array_equal(read_features(path).features, arrays["features"])


def test_other_schema_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "f.h5", toy_arrays())
    with h5py.File(path, "r+") as h5:
        h5.attrs["schema"] = "someone-else/2"
    with pytest.raises(UserError, match="someone-else/2"):
        read_features(path)


def test_not_hdf5_and_truncated_refused(tmp_path: Path) -> None:
    text = tmp_path / "notes.h5"
    text.write_text("not features\n")
    with pytest.raises(UserError, match=r"notes\.h5.*not an HDF5 file"):
        read_features(text)
    data = _write(tmp_path / "f.h5", toy_arrays()).read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"cut\.h5"):
        read_features(cut)


def test_identity_difference_names_the_attribute() -> None:
    a = {k: "x" for k in IDENTITY_ATTRS}
    assert identity_difference(a, dict(a)) is None
    for key in IDENTITY_ATTRS:
        diff = identity_difference({**a, key: "y"}, a)
        assert diff is not None and diff.startswith(key) and "'y'" in diff and "'x'" in diff
    assert "(none)" in (identity_difference({}, a) or "")


def test_json_attrs_decode(tmp_path: Path) -> None:
    path = _write(tmp_path / "f.h5", toy_arrays())
    with h5py.File(path) as h5:
        assert json.loads(h5.attrs["class_names"]) == CLASS_NAMES
        assert json.loads(h5.attrs["group_names"]) == GROUP_NAMES
        assert int(h5.attrs["batches_done"]) > 0
    assert decode_json_attr("", []) == [] and decode_json_attr("[1, 2]", None) == [1, 2]
    assert decode_json_attr("[1, 2", "bad") == "bad"


def test_long_skipped_list_fits(tmp_path: Path) -> None:
    # Over HDF5's 64 KiB compact-attribute limit: thousands of unreadable rows must still be recorded.
    arrays = toy_arrays()
    path = tmp_path / "f.h5"
    w = FeatureWriter.create(path, ATTRS, arrays["features"].shape[1])
    w.append(_rows(arrays, 0, len(arrays["y"])))
    skipped = [f"images/some/long/folder/name/img{i:06d}.jpg" for i in range(5000)]
    w.finish(skipped=skipped)
    assert decode_json_attr(read_features(path).attrs["skipped"], []) == skipped


def test_summarize_refuses_a_group_code_outside_group_names(tmp_path: Path) -> None:
    """`probe info` counts rows per named group: a row of group 4 of 4 names would be counted
    nowhere, and read_features refuses the file; info says so too."""
    arrays = toy_arrays(n_per_group_split=3)
    arrays["group"][5] = len(GROUP_NAMES)
    path = _write(tmp_path / "f.h5", arrays)
    for read in (summarize, read_features):
        with pytest.raises(UserError, match=r"group=4 at row 5 is outside group_names"):
            read(path)
