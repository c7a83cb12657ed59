"""Malformed metadata never crashes a loader: it loads correctly or raises a UserError.

Each test builds one valid dataset in the real format, then lets hypothesis replace one
of its files with a damaged version (columns dropped or renamed, cells replaced by
garbage, rows dropped, duplicated or made ragged, the file emptied, random bytes).
"""

from __future__ import annotations

import csv
import io
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from base.errors import UserError
from features.datasets import load_dataset
from features.datasets.base import DatasetSpec
from tests.fixtures import formats as F

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
GARBAGE = st.one_of(
    st.sampled_from(["", " ", "-", "-1", "1", "2", "3", "1.0", "1.5", "nan", "True", "yes", "train", "TEST",
                     "neutral", "-", '"', "a,b", "\t", "\n", "０", "１", "٣", "1e3", "0x1", "+1", "  2  "]),
    st.text(max_size=8),
)


@st.composite
def damaged_rows(draw: st.DrawFn, rows: list[list[str]]) -> list[list[str]]:
    """The table (header first) with a few random kinds of damage."""
    rows = [list(r) for r in rows]
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["cell", "cell", "cell", "drop_col", "rename_col", "drop_rows", "ragged",
                                     "dup_row", "header_only", "blank_lines"]))
        width = max(len(r) for r in rows) if rows else 0
        if kind == "cell" and rows and width:
            i = draw(st.integers(0, len(rows) - 1))
            if rows[i]:
                j = draw(st.integers(0, len(rows[i]) - 1))
                rows[i][j] = draw(GARBAGE)
        elif kind == "drop_col" and width:
            j = draw(st.integers(0, width - 1))
            rows = [r[:j] + r[j + 1:] for r in rows]
        elif kind == "rename_col" and rows and rows[0]:
            j = draw(st.integers(0, len(rows[0]) - 1))
            rows[0][j] = draw(GARBAGE)
        elif kind == "drop_rows" and len(rows) > 1:
            keep = draw(st.lists(st.booleans(), min_size=len(rows) - 1, max_size=len(rows) - 1))
            rows = rows[:1] + [r for r, k in zip(rows[1:], keep, strict=True) if k]
        elif kind == "ragged" and len(rows) > 1:
            i = draw(st.integers(1, len(rows) - 1))
            rows[i] = rows[i][:-1] if draw(st.booleans()) else rows[i] + [draw(GARBAGE)]
        elif kind == "dup_row" and len(rows) > 1:
            i = draw(st.integers(1, len(rows) - 1))
            rows.insert(draw(st.integers(1, len(rows))), list(rows[i]))
        elif kind == "header_only":
            rows = rows[:1]
        elif kind == "blank_lines" and rows:
            rows.insert(draw(st.integers(0, len(rows))), [])
    return rows


def to_csv(rows: list[list[str]], delimiter: str = ",") -> bytes:
    buf = io.StringIO()
    csv.writer(buf, delimiter=delimiter, lineterminator="\n").writerows(rows)
    return buf.getvalue().encode("utf-8")


def to_spaced(rows: list[list[str]]) -> bytes:
    return ("\n".join(" ".join(r) for r in rows) + "\n").encode("utf-8")


def content(rows: list[list[str]], encode: Callable[[list[list[str]]], bytes]) -> st.SearchStrategy[bytes]:
    """Damaged versions of the file, an empty file, or random bytes."""
    return st.one_of(
        damaged_rows(rows).map(encode),
        damaged_rows(rows).map(encode),
        damaged_rows(rows).map(encode),
        st.just(b""),
        st.binary(max_size=200),
        st.text(alphabet=", \n\t-01abc\"'", max_size=120).map(lambda s: s.encode("utf-8")),
    )


def read_rows(path: Path, delimiter: str = ",") -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh, delimiter=delimiter))


def check_outcome(load: Callable[[], DatasetSpec], group_rule: bool) -> None:
    """Either a UserError, or a spec whose labels are consistent."""
    try:
        spec = load()
    except UserError as exc:
        assert str(exc).strip(), "empty UserError message"
        return
    n = len(spec)
    assert n > 0 and len(spec.items) == n
    assert set(np.unique(spec.split)) <= {0, 1, 2}
    assert ((spec.y >= 0) & (spec.y < len(spec.class_names))).all()
    assert ((spec.group >= 0) & (spec.group < len(spec.group_names))).all()
    if group_rule:
        np.testing.assert_array_equal(spec.group, 2 * spec.y + spec.a)


@pytest.fixture(scope="module")
def workdir():
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)


def test_waterbirds_fuzz(workdir: Path) -> None:
    built = F.waterbirds(workdir / "wb", per_cell=1)
    meta = built.files["metadata"]
    rows = read_rows(meta)

    @SETTINGS
    @given(data=content(rows, to_csv))
    def run(data: bytes) -> None:
        meta.write_bytes(data)
        check_outcome(lambda: load_dataset("waterbirds", built.root), group_rule=True)

    run()


@pytest.mark.parametrize("fmt", ["csv", "txt"])
@pytest.mark.parametrize("which", ["attributes", "partition"])
def test_celeba_fuzz(workdir: Path, fmt: str, which: str) -> None:
    built = F.celeba(workdir / f"celeba_{fmt}_{which}", fmt=fmt, per_cell=1)
    path = built.files[which]
    if fmt == "csv":
        rows, encode = read_rows(path), to_csv
    else:
        rows, encode = [ln.split() for ln in path.read_text().splitlines()], to_spaced

    @SETTINGS
    @given(data=content(rows, encode))
    def run(data: bytes) -> None:
        path.write_bytes(data)
        check_outcome(lambda: load_dataset("celeba", built.root), group_rule=True)

    run()


@pytest.mark.parametrize("which", ["metadata", "dev_matched"])
@pytest.mark.parametrize("text", ["jsonl", "glue"])
def test_multinli_fuzz(workdir: Path, which: str, text: str) -> None:
    built = F.multinli(workdir / f"mnli_{which}_{text}", text=text, per_cell=1)
    path = built.files[which]
    if which == "metadata":
        rows, encode = read_rows(path), to_csv
    elif text == "glue":
        rows, encode = [ln.split("\t") for ln in path.read_text().splitlines()], (lambda r: to_spaced(r).replace(
            b" ", b"\t"))
    else:  # jsonl: damage the lines themselves (each line one "cell")
        rows, encode = [[ln] for ln in path.read_text().splitlines()], (lambda r: "\n".join(
            "".join(x) for x in r).encode("utf-8"))

    @SETTINGS
    @given(data=content(rows, encode))
    def run(data: bytes) -> None:
        path.write_bytes(data)
        check_outcome(lambda: load_dataset("multinli", built.root), group_rule=True)

    run()


@pytest.mark.parametrize("kind", ["image", "text"])
def test_table_fuzz(workdir: Path, kind: str) -> None:
    if kind == "image":
        built = F.image_table(workdir / "table_img", per_cell=1)
        options = {"image_col": "path", "label_col": "label", "attr_col": "background"}
    else:
        built = F.text_table(workdir / "table_txt", per_cell=1)
        options = {"text_col": "premise,hypothesis", "group_col": "group"}
    path = built.files["metadata"]
    rows = read_rows(path)

    @SETTINGS
    @given(data=content(rows, to_csv))
    def run(data: bytes) -> None:
        path.write_bytes(data)
        check_outcome(lambda: load_dataset("table", built.root, metadata=path.name, **options),
                      group_rule=False)

    run()
