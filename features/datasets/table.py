"""Any dataset described by one table, as DFR v2, BalancingGroups and SubpopBench keep them.

``metadata`` (CSV, or TSV by its .tsv/.tab suffix; relative to ``root``) with one row per
example and the columns named by the options (``--image-col`` for ``image_col`` on the
command line):

- ``image_col`` (image paths, relative to ``root``; without ``root``, to the table's
  folder) or ``text_col`` (a text, or two comma-separated columns for a sentence pair);
- ``label_col`` (default ``y``): strings or integers; classes are the sorted distinct
  values (integers sorted numerically);
- ``attr_col`` (default ``a`` when present) and/or ``group_col``: with an attribute,
  group = class index * number of attribute values + attribute index; with only a
  group column, groups are its sorted distinct values and the attribute is -1;
- ``split_col`` (default ``split``): 0/1/2 or train/val/valid/validation/test (any case).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from base.errors import UserError
from features.datasets import _tables as T
from features.datasets.base import DatasetSpec
from features.datasets.registry import METADATA_OPTION, DatasetOption, register

# The options that name the table's columns.
COLUMNS = (
    DatasetOption("image_col", "column of image paths"),
    DatasetOption("text_col", "text column (two, comma-separated, for sentence pairs)"),
    DatasetOption("label_col", "label column"),
    DatasetOption("attr_col", "spurious attribute column"),
    DatasetOption("group_col", "group column (instead of an attribute)"),
    DatasetOption("split_col", "split column"),
)
DEFAULTS = {"label_col": "y", "split_col": "split", "attr_col": "a"}


def _categories(values: list[str], names: list[str] | None = None) -> tuple[list[str], np.ndarray]:
    """Sorted distinct values (numerically when all are integers, "1" and "1.0" being one) and codes.

    With ``names``, the values are already codes 0..len(names)-1 (a Hugging Face ClassLabel,
    a known layout's 0/1 column) and ``names`` name them.
    """
    values = [v.strip() for v in values]
    ints = [T.parse_int(v) for v in values]
    if names is not None:
        return list(names), np.asarray(ints, dtype=np.int64)
    if all(i is not None for i in ints):
        values = [str(i) for i in ints]
    names = T.sorted_values(values)
    return names, T.encode(values, names)


def _part(column: str, value: str) -> str:
    """A readable name part: 'waterbird' as is, a bare number as 'y=1'."""
    return f"{column}={value}" if T.parse_int(value) is not None else value


@dataclass
class Labels:
    """Classes, attributes and groups of a table's rows, and how they were derived."""

    y: np.ndarray
    a: np.ndarray
    group: np.ndarray
    class_names: list[str]
    group_names: list[str]
    attr_names: list[str]
    source: dict[str, Any]  # the rules, for the feature file's `source`


def labels(table: T.Table, cols: dict[str, Any], names: dict[str, list[str]] | None = None) -> Labels:
    """Labels, attribute and groups from the columns ``cols`` names (see the module docstring);
    ``names`` gives the value names of columns whose values are already codes."""
    names = names or {}
    label_col = cols["label_col"]
    class_names, y = _categories(table.nonempty(label_col, hint="every row needs a label"), names.get(label_col))
    attr_col, group_col = cols.get("attr_col"), cols.get("group_col")
    a = np.full(len(table), -1, dtype=np.int64)
    attr_names: list[str] = []
    if attr_col is not None:
        attr_names, a = _categories(table.nonempty(attr_col, hint="every row needs an attribute value"),
                                    names.get(attr_col))
    if group_col is not None:
        group_values, group = _categories(table.nonempty(group_col, hint="every row needs a group"),
                                          names.get(group_col))
        group_names = [_part(group_col, g) for g in group_values]
        _distinct(table, group_names, [f"{group_col} value {g!r}" for g in group_values])
        group_rule = f"sorted distinct values of {group_col!r}"
    else:
        group = y * len(attr_names) + a
        named = label_col in names and attr_col in names
        pairs = [(c, v) for c in class_names for v in attr_names]
        group_names = [f"{c}/{v}" if named else f"{_part(label_col, c)}/{_part(str(attr_col), v)}" for c, v in pairs]
        _distinct(table, group_names, [f"{label_col} {c!r} with {attr_col} {v!r}" for c, v in pairs])
        group_rule = f"class index * {len(attr_names)} + attribute index"
    return Labels(y=y, a=a, group=group, class_names=[str(c) for c in class_names], group_names=group_names,
                  attr_names=attr_names, source={
                      "class_values": class_names, "attribute_values": attr_names,
                      "label": f"y = index of {label_col!r} in class_values",
                      "attribute": f"a = index of {attr_col!r} in attribute_values" if attr_col else
                                   "a = -1 (no attribute)",
                      "group": group_rule})


def _distinct(table: T.Table, names: list[str], made_from: list[str]) -> None:
    """Refuse group names that collide (labels `a`, `a/b` with attributes `b/c`, `c` both name
    `a/b/c`): results are keyed by name, so the two groups would be merged."""
    first: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in first:
            raise UserError(f"{table.path}: {made_from[first[name]]} and {made_from[i]} would both be the group "
                            f"{name!r}; rename one of those values")
        first[name] = i


def _delimiter(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq", ".feather", ".arrow"):
        raise UserError(f"`metadata` {path}: {suffix} files are read by dataset 'hf' (pass the file or its folder "
                        "as `root`, with the same column options); or save the table as CSV")
    return "\t" if suffix in (".tsv", ".tab") else ","


def column_options(options: dict[str, Any], header: list[str], where: Path | str, dataset: str,
                   defaults: dict[str, str] | None = None) -> dict[str, Any]:
    """Column names from the options, else ``defaults`` (the conventional ``y``, ``split`` and
    ``a`` when not given) where the data has them."""
    defaults = {**DEFAULTS, **(defaults or {})}
    cols: dict[str, Any] = {c.name: options[c.name] for c in COLUMNS if c.name in options}
    for key in ("image_col", "text_col"):
        if key in defaults and "image_col" not in cols and "text_col" not in cols:
            cols[key] = defaults[key]
    for key in ("label_col", "split_col"):
        if defaults.get(key) is not None:
            cols.setdefault(key, defaults[key])
    if "attr_col" not in cols and "group_col" not in cols:
        if defaults["attr_col"] not in header:
            raise UserError(f"{where}: give `attr_col` (spurious attribute) or `group_col`; there is no column "
                            f"{defaults['attr_col']!r} to use by default (columns: {', '.join(map(repr, header[:30]))})")
        cols["attr_col"] = defaults["attr_col"]
    has_image, has_text = "image_col" in cols, "text_col" in cols
    if has_image == has_text:
        raise UserError(f"dataset {dataset!r} needs exactly one of `image_col` (images) or `text_col` (a text "
                        "column, or two comma-separated for sentence pairs)")
    if has_text:
        texts = [c.strip() for c in str(cols["text_col"]).split(",")]
        if not 1 <= len(texts) <= 2 or not all(texts):
            raise UserError(f"`text_col` {cols['text_col']!r}: give one column, or two separated by a comma "
                            "for sentence pairs (e.g. `text_col` premise,hypothesis)")
        cols["text_col"] = texts
    return cols


def named_by(cols: dict[str, Any], options: dict[str, Any]) -> dict[str, str]:
    """Column name -> the option that named it (`label_col`, or `label_col` (default)), for messages."""
    out: dict[str, str] = {}
    for key, value in cols.items():
        for name in value if isinstance(value, list) else [value]:
            out.setdefault(name, f"`{key}`" + (" (default)" if key not in options else ""))
    return out


def wanted_columns(cols: dict[str, Any]) -> list[str]:
    return list(dict.fromkeys(n for v in cols.values() for n in (v if isinstance(v, list) else [v])))


@register("table", modalities=("image", "text"), root="optional",
          options=(METADATA_OPTION.meaning("the CSV or TSV table"), *COLUMNS),
          help="any CSV or TSV table; see the column options")
def load(root: Path | None, **options: Any) -> DatasetSpec:
    if "metadata" not in options:
        raise UserError("dataset 'table' needs `metadata` FILE: the CSV with one row per example "
                        "(relative paths are taken from `root`)")
    if root is not None:
        base = T.resolve_root(root, "table", "the table and the files it names")
        path = T.resolve_file(options["metadata"], base, "`metadata`")
    else:
        path = T.resolve_file(options["metadata"], Path.cwd(), "`metadata`")
        base = path.parent.resolve()
    delimiter = _delimiter(path)
    what = "table"
    header = T.read_header(path, what, delimiter)
    if not header:
        raise UserError(f"{path}: the table is empty (no header line); it needs a header and one row per example")
    cols = column_options(options, header, path, "table")
    table = T.read_table(path, wanted_columns(cols), what=what, named_by=named_by(cols, options),
                         delimiter=delimiter)
    rows = labels(table, cols)
    split = table.splits(cols["split_col"], words=True)
    if "image_col" in cols:
        image_col = cols["image_col"]
        paths = table.nonempty(image_col, hint="every row needs an image path")
        T.check_unique(table, image_col)
        modality, items, ids = "image", [str(base / p) for p in paths], list(paths)
    else:
        texts = [table.columns[c] for c in cols["text_col"]]
        modality = "text"
        items = list(zip(*texts, strict=True)) if len(texts) == 2 else list(texts[0])
        ids = [f"row {i + 1}" for i in range(len(table))]
    return DatasetSpec(
        name="table",
        modality=modality,
        items=items,
        ids=ids,
        y=rows.y, a=rows.a, group=rows.group, split=split,
        class_names=rows.class_names, group_names=rows.group_names,
        source={
            "root": str(base), "files": [str(path)], "format": "table (CSV)" if delimiter == "," else "table (TSV)",
            "columns": cols, **rows.source, "options": dict(options),
        },
    )
