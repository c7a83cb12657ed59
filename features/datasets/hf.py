"""Hugging Face datasets on disk, read with the ``datasets`` library offline (``HF_DATASETS_OFFLINE``).

``root`` is one of:

- a folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``
  (``state.json`` / ``dataset_dict.json``), opened with ``datasets.load_from_disk``;
- a folder of parquet or arrow files, such as a downloaded Hub repository
  (``data/train-00000-of-00001.parquet`` ...), opened with ``datasets.load_dataset``,
  which splits it by file names (or by the repository card's ``configs``) as the Hub does;
- a single parquet or arrow file.

Columns are named as for dataset ``table`` (``image_col`` or ``text_col``, ``label_col``,
``attr_col`` or ``group_col``, ``split_col``); ``label_col`` defaults to ``label`` (the Hub's
name) when there is no ``y``. Splits come from ``split_col``, else from the
split names of a DatasetDict or of the files (train, validation/valid/val, test), else
from a ``split`` column. Images may be an ``Image`` feature (``{"bytes", "path"}``
records, decoded from their bytes exactly as the same file would be), raw bytes, or
paths relative to ``root``. A ``ClassLabel`` column keeps its own class names.

Known layouts of public copies on the Hub are recognised from their columns, so they
need no column options (any given option still wins):

- Waterbirds as ``grodino/waterbirds`` publishes it (and its duplicates): ``image``,
  ``label`` (0 landbird, 1 waterbird), ``place`` (0 land, 1 water); splits train,
  validation, test. Group = 2*label + place, named as dataset ``waterbirds`` names them.
- CelebA as ``tpremoli/CelebA-attrs`` (``image``, the 40 attributes in -1/1,
  ``prompt_string``; splits train, validation, test) or ``flwrlabs/celeba`` (``image``,
  ``celeb_id``, the 40 attributes as booleans; splits train, valid, test): target
  ``Blond_Hair``, attribute ``Male`` by default, any attribute with ``label_col`` /
  ``attr_col``; -1/False -> 0; groups named as dataset ``celeba`` names them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from base.errors import UserError
from features.datasets import _tables as T
from features.datasets.base import DatasetSpec
from features.datasets.registry import register
from features.datasets.table import COLUMNS, column_options, labels, named_by, wanted_columns
from features.encoders.core import one_line

DATA_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".arrow": "arrow"}
SAVED_MARKERS = ("dataset_dict.json", "state.json")


@dataclass(frozen=True)
class Layout:
    """A public copy's columns: recognised when it has all of ``requires``."""

    name: str
    requires: tuple[str, ...]
    columns: dict[str, str]  # default column options
    names: Callable[[str], tuple[str, str] | None]  # a 0/1 column's value names (None: not such a column)


def _waterbirds_names(column: str) -> tuple[str, str] | None:
    return {"label": ("landbird", "waterbird"), "place": ("land", "water")}.get(column)


LAYOUTS = (
    Layout("Waterbirds (grodino/waterbirds)", ("image", "label", "place"),
           {"image_col": "image", "label_col": "label", "attr_col": "place"}, _waterbirds_names),
    Layout("CelebA (tpremoli/CelebA-attrs, flwrlabs/celeba)", ("image", "Blond_Hair", "Male"),
           {"image_col": "image", "label_col": "Blond_Hair", "attr_col": "Male"},
           lambda column: (f"not {column}", column)),
)
# -1/1 as CelebA's files write them, 0/1, or booleans (flwrlabs/celeba): one binary value each.
_BINARY = {-1: 0, 0: 0, 1: 1}  # False and True hash as 0 and 1
OPTIONS = tuple(c.meaning("column of images: an Image feature, image bytes, or paths relative to `root`")
                if c.name == "image_col" else c for c in COLUMNS)


def _datasets() -> Any:
    """The ``datasets`` library, never allowed to reach the Hub from here."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        import datasets
    except ImportError as exc:
        raise UserError("dataset 'hf' needs the Hugging Face datasets package (pip install datasets)") from exc
    return datasets


@contextmanager
def _no_progress_bars(datasets: Any) -> Iterator[None]:
    """The library draws its own bars on stderr (converting parquet, reading shards); only the
    command line draws here, so they are off while a dataset is opened, and restored after."""
    was_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_on:
            datasets.enable_progress_bars()


def _open(root: Path) -> tuple[list[tuple[str | None, Any]], str]:
    """(named parts, format) of the dataset at ``root``; parts are unnamed when nothing splits them."""
    datasets = _datasets()

    try:
        if any((root / m).is_file() for m in SAVED_MARKERS):
            loaded, fmt = datasets.load_from_disk(str(root)), "save_to_disk folder"
        elif root.is_file():
            if root.suffix.lower() not in DATA_SUFFIXES:
                raise UserError(f"`root` {root}: not a parquet or arrow file (nor a folder)")
            builder = DATA_SUFFIXES[root.suffix.lower()]
            loaded, fmt = datasets.load_dataset(builder, data_files=str(root), split="train"), f"{builder} file"
        else:
            found = sorted({p.suffix.lower() for p in root.rglob("*") if p.suffix.lower() in DATA_SUFFIXES})
            if not found:
                raise UserError(f"`root` {root}: no save_to_disk folder ({' or '.join(SAVED_MARKERS)}) and no "
                                "parquet or arrow files in it; point `root` at the dataset")
            loaded, fmt = datasets.load_dataset(str(root)), f"folder of {'/'.join(s[1:] for s in found)} files"
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - datasets and pyarrow raise many types; each means "cannot read"
        raise UserError(f"`root` {root}: cannot be read as a Hugging Face dataset ({one_line(exc, 160)})") from exc
    if isinstance(loaded, datasets.DatasetDict):
        parts = list(loaded.items())
        return (parts if len(parts) > 1 else [(None, parts[0][1])]), fmt
    return [(None, loaded)], fmt


def _layout(header: Sequence[str]) -> Layout | None:
    return next((lay for lay in LAYOUTS if set(lay.requires) <= set(header)), None)


def _binary_text(values: list[Any], where: str, column: str) -> list[str]:
    out = []
    for i, v in enumerate(values):
        code = _BINARY.get(v) if isinstance(v, (bool, int, np.integer)) else None
        if code is None:
            raise UserError(f"{where}, column {column!r}, row {i + 1}: {v!r} is not a binary value "
                            "(-1/1, 0/1 or true/false)")
        out.append(str(code))
    return out


def _text(value: Any) -> str:
    if value is None:
        return ""
    return str(int(value)) if isinstance(value, (bool, np.bool_)) else str(value)


class _Rows(T.Table):
    """The concatenated parts' wanted columns as text, rows named by part and position."""

    parts: list[tuple[str | None, int]]

    def where(self, i: int, column: str | None = None) -> str:
        col = f", column {column!r}" if column is not None else ""
        for name, n in self.parts:
            if i < n:
                return f"{self.path}{col}, {f'split {name!r} ' if name else ''}row {i + 1}"
            i -= n
        return f"{self.path}{col}"


class ColumnItems(Sequence):
    """One column of a Hugging Face dataset as the items to encode, read row by row (images
    stay encoded until a worker prepares them); paths are taken relative to ``base``."""

    def __init__(self, data: Any, column: str, base: Path | None) -> None:
        self.data, self.column, self.base = data, column, base

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        value = self.data[int(i)][self.column]
        return str(self.base / value) if isinstance(value, str) and self.base is not None else value


def _splits(table: _Rows, cols: dict[str, Any], header: list[str]) -> np.ndarray:
    if "split_col" in cols:
        return table.splits(cols["split_col"], words=True)
    if table.parts[0][0] is not None:
        codes = []
        for name, n in table.parts:
            code = T.parse_split(str(name), words=True)
            if code is None:
                raise UserError(f"{table.path}: split {name!r} is not train, validation or test; pass `split_col` "
                                "to split by a column instead")
            codes.append(np.full(n, code, dtype=np.int8))
        return np.concatenate(codes)
    raise UserError(f"{table.path}: one unnamed split and no 'split' column; pass `split_col` (the column "
                    f"holding train/val/test or 0/1/2; columns: {', '.join(map(repr, header[:30]))})")


@register("hf", modalities=("image", "text"), options=OPTIONS,
          help="a Hugging Face dataset on disk: save_to_disk, parquet or arrow")
def load(root: Path | None, **options: Any) -> DatasetSpec:
    if root is None:
        raise UserError("`root` is required for dataset 'hf': a save_to_disk folder, a folder of parquet/arrow "
                        "files or one such file")
    root = Path(root).expanduser()
    if not root.exists():
        raise UserError(f"`root` {root}: no such folder or file")
    datasets = _datasets()
    with _no_progress_bars(datasets):
        return _load(datasets, root, options)


def _load(datasets: Any, root: Path, options: dict[str, Any]) -> DatasetSpec:
    parts, fmt = _open(root.resolve())
    header = list(parts[0][1].column_names)
    for name, part in parts[1:]:
        if list(part.column_names) != header:
            raise UserError(f"`root` {root}: split {name!r} has other columns than split {parts[0][0]!r}")
    data = datasets.concatenate_datasets([p for _, p in parts]) if len(parts) > 1 else parts[0][1]
    layout = _layout(header)
    defaults = {"split_col": "split" if parts[0][0] is None else None}
    if "label" in header and "y" not in header:
        defaults["label_col"] = "label"  # the Hub's convention for the class column
    cols = column_options(options, header, root, "hf", {**defaults, **(layout.columns if layout else {})})
    T.column_positions(str(root), header, wanted_columns(cols), "Hugging Face dataset", named_by(cols, options))
    table, names = _read_columns(data, cols, layout, str(root), [(n, len(p)) for n, p in parts])
    rows = labels(table, cols, names)
    split = _splits(table, cols, header)
    items, modality = _items(data, cols, root)
    ids = ([f"{n}/{j}" for n, p in parts for j in range(len(p))] if parts[0][0] is not None
           else [f"row {i + 1}" for i in range(len(data))])
    return DatasetSpec(
        name="hf", modality=modality, items=items, ids=ids, y=rows.y, a=rows.a, group=rows.group, split=split,
        class_names=rows.class_names, group_names=rows.group_names,
        source={"root": str(root.resolve()), "files": [str(root.resolve())], "format": f"Hugging Face {fmt}",
                "layout": layout.name if layout else None, "splits": [n for n, _ in parts if n is not None],
                "columns": cols, **rows.source, "options": dict(options)},
    )


def _read_columns(data: Any, cols: dict[str, Any], layout: Layout | None, where: str,
                  parts: list[tuple[str | None, int]]) -> tuple[_Rows, dict[str, list[str]]]:
    """The label, attribute, group and split columns as text, and the value names of coded ones."""
    datasets = _datasets()
    names: dict[str, list[str]] = {}
    columns: dict[str, list[str]] = {}
    for key in ("label_col", "attr_col", "group_col", "split_col"):
        column = cols.get(key)
        if column is None or column in columns:
            continue
        values = data[column]
        feature = data.features[column]
        binary = layout.names(column) if layout is not None and key in ("label_col", "attr_col") else None
        if isinstance(feature, datasets.ClassLabel):
            names[column] = list(feature.names)
            columns[column] = _codes_text(values, len(feature.names), where, column)
        elif binary is not None:
            names[column] = list(binary)
            columns[column] = _binary_text(values, where, column)
        else:
            columns[column] = [_text(v) for v in values]
    n = len(data)
    table = _Rows(path=where, header=list(data.column_names), columns=columns, lines=list(range(1, n + 1)),
                  what="Hugging Face dataset")
    table.parts = parts
    return table, names


def _codes_text(values: list[Any], n: int, where: str, column: str) -> list[str]:
    """A ClassLabel column's codes, each a class (-1, the library's "no label", is refused)."""
    for i, v in enumerate(values):
        if not isinstance(v, (int, np.integer)) or not 0 <= v < n:
            raise UserError(f"{where}, column {column!r}, row {i + 1}: {v!r} is not one of its {n} classes "
                            "(unlabelled row?)")
    return [str(int(v)) for v in values]


def _items(data: Any, cols: dict[str, Any], root: Path) -> tuple[Any, str]:
    datasets = _datasets()

    if "image_col" in cols:
        column = cols["image_col"]
        feature = data.features[column]
        if isinstance(feature, datasets.Image):
            data = data.cast_column(column, datasets.Image(decode=False))
        base = root.resolve() if root.is_dir() else root.resolve().parent
        return ColumnItems(data.select_columns([column]), column, base), "image"
    texts = [[_text(v) for v in data[c]] for c in cols["text_col"]]
    return (list(zip(*texts, strict=True)) if len(texts) == 2 else texts[0]), "text"
