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


def _categories(values: list[str]) -> tuple[list[str], np.ndarray]:
    """Sorted distinct values (numerically when all are integers, "1" and "1.0" being one) and codes."""
    values = [v.strip() for v in values]
    ints = [T.parse_int(v) for v in values]
    if all(i is not None for i in ints):
        values = [str(i) for i in ints]
    names = T.sorted_values(values)
    return names, T.encode(values, names)


def _part(column: str, value: str) -> str:
    """A readable name part: 'waterbird' as is, a bare number as 'y=1'."""
    return f"{column}={value}" if T.parse_int(value) is not None else value


def _delimiter(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq", ".feather", ".arrow"):
        raise UserError(f"`metadata` {path}: {suffix} tables are not read (pyarrow is not a dependency); save "
                        "the table as CSV (e.g. pandas: df.to_csv('table.csv', index=False))")
    return "\t" if suffix in (".tsv", ".tab") else ","


def _columns(options: dict[str, Any], header: list[str], path: Path) -> dict[str, Any]:
    """Column names from the options, or the conventional defaults when the table has them."""
    cols: dict[str, Any] = {c.name: options[c.name] for c in COLUMNS if c.name in options}
    for key in ("label_col", "split_col"):
        cols.setdefault(key, DEFAULTS[key])
    if "attr_col" not in cols and "group_col" not in cols:
        if DEFAULTS["attr_col"] not in header:
            raise UserError(f"{path}: give `attr_col` (spurious attribute) or `group_col`; the table has no "
                            f"column 'a' to use by default (columns: {', '.join(map(repr, header[:30]))})")
        cols["attr_col"] = DEFAULTS["attr_col"]
    has_image, has_text = "image_col" in cols, "text_col" in cols
    if has_image == has_text:
        raise UserError("dataset 'table' needs exactly one of `image_col` (image paths) or `text_col` (a text "
                        "column, or two comma-separated for sentence pairs)")
    if has_text:
        texts = [c.strip() for c in str(cols["text_col"]).split(",")]
        if not 1 <= len(texts) <= 2 or not all(texts):
            raise UserError(f"`text_col` {cols['text_col']!r}: give one column, or two separated by a comma "
                            "for sentence pairs (e.g. `text_col` premise,hypothesis)")
        cols["text_col"] = texts
    return cols


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
    cols = _columns(options, header, path)
    named_by = {}
    for key, value in cols.items():
        for name in value if isinstance(value, list) else [value]:
            named_by.setdefault(name, f"`{key}`" + (" (default)" if key not in options else ""))
    wanted = list(dict.fromkeys(n for v in cols.values() for n in (v if isinstance(v, list) else [v])))
    table = T.read_table(path, wanted, what=what, named_by=named_by, delimiter=delimiter)

    label_col = cols["label_col"]
    class_names, y = _categories(table.nonempty(label_col, hint="every row needs a label"))
    split = table.splits(cols["split_col"], words=True)
    attr_col, group_col = cols.get("attr_col"), cols.get("group_col")
    a = np.full(len(table), -1, dtype=np.int64)
    attr_names: list[str] = []
    if attr_col is not None:
        attr_names, a = _categories(table.nonempty(attr_col, hint="every row needs an attribute value"))
    if group_col is not None:
        group_values, group = _categories(table.nonempty(group_col, hint="every row needs a group"))
        group_names = [_part(group_col, g) for g in group_values]
        group_rule = f"sorted distinct values of {group_col!r}"
    else:
        group = y * len(attr_names) + a
        group_names = [f"{_part(label_col, c)}/{_part(str(attr_col), v)}" for c in class_names for v in attr_names]
        group_rule = f"class index * {len(attr_names)} + attribute index"

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
        y=y, a=a, group=group, split=split,
        class_names=[str(c) for c in class_names], group_names=group_names,
        source={
            "root": str(base), "files": [str(path)], "format": "table (CSV)" if delimiter == "," else "table (TSV)",
            "columns": cols, "class_values": class_names, "attribute_values": attr_names,
            "label": f"y = index of {label_col!r} in class_values",
            "attribute": f"a = index of {attr_col!r} in attribute_values" if attr_col else "a = -1 (no attribute)",
            "group": group_rule, "options": dict(options),
        },
    )
