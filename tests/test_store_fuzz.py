"""Fuzz the feature-file reader: a malformed file loads correctly or gives UserError, nothing else."""

from __future__ import annotations

import tempfile
from pathlib import Path

import h5py
import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from base.errors import UserError
from features.store import FeatureSet, read_features
from tests.h5craft import toy_arrays, write_feature_file

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _load_or_user_error(path: Path) -> FeatureSet | None:
    try:
        return read_features(path)
    except UserError as exc:
        msg = str(exc)
        assert "\n" not in msg and str(path.name) in msg, msg
        return None


@FUZZ
@given(cut=st.floats(0.0, 0.999), flips=st.lists(st.tuples(st.floats(0, 0.999), st.integers(0, 255)), max_size=8))
def test_corrupted_bytes(cut: float, flips: list[tuple[float, int]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = write_feature_file(Path(tmp) / "f.h5")
        data = bytearray(path.read_bytes())
        for pos, value in flips:
            data[int(pos * len(data))] = value
        data = data[: max(1, int(len(data) * (1 - cut)))] if cut > 0.5 else data
        path.write_bytes(bytes(data))
        fs = _load_or_user_error(path)
        if fs is not None:  # if it loads, it must be internally consistent
            n = len(fs.y)
            assert fs.features.shape[0] == n == len(fs.group) == len(fs.split) == len(fs.ids)
            assert np.isfinite(fs.features).all()
            assert ((fs.y >= 0) & (fs.y < fs.num_classes)).all()


_VALUE = st.one_of(
    st.integers(-3, 10), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
    st.just(b"\xff\xfe"), st.just("[1, 2"), st.just('["a"]'), st.just("[]"),
)


@FUZZ
@given(
    attr=st.sampled_from(["schema", "class_names", "group_names", "complete", "rows_written", "source"]),
    value=_VALUE,
    dataset=st.sampled_from(["features", "y", "a", "group", "split", "id"]),
    mutation=st.sampled_from(["none", "drop", "shorten", "2d", "float", "strings"]),
)
def test_malformed_structure(attr: str, value: object, dataset: str, mutation: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.h5"
        arrays = toy_arrays()
        write_feature_file(path, arrays)
        with h5py.File(path, "a") as h5:
            try:
                h5.attrs[attr] = value
            except ValueError:  # h5py cannot store this value (e.g. a NUL in a string)
                assume(False)
            if mutation != "none":
                original = h5[dataset][()]
                del h5[dataset]
                if mutation == "shorten":
                    h5.create_dataset(dataset, data=original[:-3])
                elif mutation == "2d":
                    h5.create_dataset(dataset, data=np.zeros((len(original), 2, 2)))
                elif mutation == "float":
                    h5.create_dataset(dataset, data=np.full(len(original), 0.5))
                elif mutation == "strings":
                    h5.create_dataset(dataset, data=[b"x"] * len(original))
        _load_or_user_error(path)
