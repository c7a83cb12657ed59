"""CelebA in either format users have it: Kaggle CSV (group_DRO, WILDS ``celebA_v1.0/``) or official TXT.

- Kaggle: ``list_attr_celeba.csv`` (``image_id`` + 40 attributes in -1/1) and
  ``list_eval_partition.csv`` (``image_id,partition``).
- Official: ``list_attr_celeba.txt`` (line 1 the row count, line 2 the 40 names, then
  ``000001.jpg  -1 1 ...``) and ``list_eval_partition.txt`` (``000001.jpg 0``), also in the
  Google Drive layout's ``Anno/`` and ``Eval/`` folders.
- Images in ``img_align_celeba/``, or ``img_align_celeba/img_align_celeba/`` as the Kaggle zip
  unpacks (``Img/img_align_celeba/`` in the Google Drive layout).

Target and spurious attribute are any two of the 40 (default Blond_Hair and Male);
-1 maps to 0 and group = ``2*y + spurious``. Partition 0 train, 1 val, 2 test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from base.errors import UserError
from features.datasets import _tables as T
from features.datasets.base import DatasetSpec
from features.datasets.registry import METADATA_OPTION, DatasetOption, register

DEFAULT_TARGET = "Blond_Hair"
DEFAULT_SPURIOUS = "Male"
TARGET = DatasetOption("target", f"target attribute (default {DEFAULT_TARGET})")
SPURIOUS = DatasetOption("spurious", f"spurious attribute (default {DEFAULT_SPURIOUS})")
SUBFOLDERS = ("", "celebA_v1.0", "celeba", "CelebA")
ATTR_FILES = ("list_attr_celeba.csv", "list_attr_celeba.txt", "Anno/list_attr_celeba.txt")
PARTITION_FILES = ("list_eval_partition.csv", "list_eval_partition.txt", "Eval/list_eval_partition.txt")
IMAGE_FOLDERS = ("img_align_celeba/img_align_celeba", "img_align_celeba", "Img/img_align_celeba")
ATTR_VALUES = (-1, 0, 1)  # the files use -1/1; 0 (a 0/1 re-export) means "no" as well


def _find_folder(root: Path) -> tuple[Path, Path]:
    """The CelebA folder under ``root`` and its attribute file."""
    for sub in SUBFOLDERS:
        folder = root / sub if sub else root
        attr = T.first_existing(folder / f for f in ATTR_FILES)
        if attr is not None:
            return folder, attr
    raise UserError(f"`root` {root}: no list_attr_celeba.csv or list_attr_celeba.txt there or in celebA_v1.0/; "
                    "point `root` at the CelebA folder (the one holding the attribute and partition files)")


def _is_txt(path: Path) -> bool:
    """Official TXT files start with the row count; Kaggle CSVs with a header."""
    if path.suffix.lower() in (".txt", ".csv"):
        return path.suffix.lower() == ".txt"
    for _, line in T.iter_lines(path, "CelebA attribute file"):
        if line.strip():
            return T.parse_int(line) is not None
    raise UserError(f"{path}: the CelebA attribute file is empty; download it again")


def _read_attr_txt(path: Path, wanted: list[str]) -> T.Table:
    what = "CelebA attribute file"
    lines = T.iter_lines(path, what)
    count: int | None = None
    names: list[str] | None = None
    ids: list[str] = []
    values: dict[str, list[str]] = {w: [] for w in wanted}
    row_lines: list[int] = []
    positions: dict[str, int] = {}
    for line_no, line in lines:
        fields = line.split()
        if not fields:
            continue
        if count is None:
            count = T.parse_int(fields[0]) if len(fields) == 1 else None
            if count is None:
                raise UserError(f"{path}: line {line_no}: expected the number of images (official "
                                f"list_attr_celeba.txt format), found {line[:40]!r}")
            continue
        if names is None:
            names = fields
            header = ["image_id", *names]
            for param, w in zip(("`target`", "`spurious`"), wanted, strict=True):
                if w not in names:
                    raise UserError(f"{param} {w!r}: no such attribute in {path} (line {line_no}); attributes "
                                    f"are: {T.suggest(w, names)}")
                positions[w] = header.index(w)
            continue
        if len(fields) != len(names) + 1:
            raise UserError(f"{path}: {T.row_name(len(row_lines), line_no)} has {len(fields)} field(s), expected "
                            f"the image name and {len(names)} attribute values; fix or remove that line")
        ids.append(fields[0])
        row_lines.append(line_no)
        for w, pos in positions.items():
            values[w].append(fields[pos])
    if names is None:
        raise UserError(f"{path}: the CelebA attribute file has no attribute-name line; download it again")
    if not ids:
        raise UserError(f"{path}: the CelebA attribute file has a header but no rows; download it again")
    if count != len(ids):
        raise UserError(f"{path}: line 1 says {count} images but the file lists {len(ids)}; the file is "
                        "truncated or edited, download it again")
    return T.Table(path=path, header=["image_id", *names], columns={"image_id": ids, **values},
                   lines=row_lines, what=what)


def _read_partition(path: Path) -> T.Table:
    what = "CelebA partition file"
    hint = "list_eval_partition.csv has columns image_id,partition"
    if path.suffix.lower() == ".csv":
        return T.read_table(path, ("image_id", "partition"), what=what, hint=hint)
    ids: list[str] = []
    parts: list[str] = []
    row_lines: list[int] = []
    for line_no, line in T.iter_lines(path, what):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise UserError(f"{path}: {T.row_name(len(ids), line_no)}: expected '<image> <partition>' "
                            f"(e.g. '000001.jpg 0'), found {line[:60]!r}")
        ids.append(fields[0])
        parts.append(fields[1])
        row_lines.append(line_no)
    if not ids:
        raise UserError(f"{path}: the CelebA partition file is empty; download it again")
    return T.Table(path=path, header=["image_id", "partition"], columns={"image_id": ids, "partition": parts},
                   lines=row_lines, what=what)


def _partition_file(attr: Path, folder: Path) -> Path:
    prefer = ".txt" if attr.suffix.lower() == ".txt" else ".csv"
    names = sorted(PARTITION_FILES, key=lambda n: not n.endswith(prefer))
    for base in dict.fromkeys((attr.parent, folder)):
        found = T.first_existing(base / n for n in names)
        if found is not None:
            return found
    raise UserError(f"{folder}: no list_eval_partition.csv or list_eval_partition.txt beside {attr.name}; "
                    "CelebA's train/val/test partition file is needed")


def _image_folder(folder: Path, first_id: str) -> Path:
    """The image folder; when both nested and flat exist, the one holding the first image."""
    dirs = [folder / d for d in IMAGE_FOLDERS if (folder / d).is_dir()]
    if not dirs:
        raise UserError(f"{folder}: no img_align_celeba/ folder (nor img_align_celeba/img_align_celeba/); "
                        "unpack the aligned images there")
    return next((d for d in dirs if (d / first_id).exists()), dirs[0])


def _binary(table: T.Table, attr: str) -> np.ndarray:
    values = table.ints(attr, ATTR_VALUES, hint="CelebA attributes are -1 (no) or 1 (yes)")
    return (values == 1).astype(np.int64)


def _check_agreement(attrs: T.Table, parts: T.Table) -> np.ndarray:
    """Partition code of each attribute row; both files must list the same images."""
    T.check_unique(attrs, "image_id")
    T.check_unique(parts, "image_id")
    codes = parts.splits("partition")
    lookup = dict(zip(parts.columns["image_id"], codes.tolist(), strict=True))
    out = np.empty(len(attrs), dtype=np.int8)
    for i, key in enumerate(attrs.columns["image_id"]):
        code = lookup.pop(key, None)
        if code is None:
            raise UserError(f"{attrs.where(i)}: image {key!r} is not in {parts.path.name}; the attribute and "
                            "partition files do not match (use the pair from one download)")
        out[i] = code
    if lookup:
        key = next(iter(lookup))
        i = parts.columns["image_id"].index(key)
        raise UserError(f"{parts.where(i)}: image {key!r} is not in {attrs.path.name}; the attribute and "
                        "partition files do not match (use the pair from one download)")
    return out


@register("celeba", modalities=("image",), options=(TARGET, SPURIOUS, METADATA_OPTION))
def load(root: Path | None, **options: Any) -> DatasetSpec:
    base = T.resolve_root(root, "celeba", "list_attr_celeba.csv/.txt, list_eval_partition and img_align_celeba/")
    target = options.get("target", DEFAULT_TARGET)
    spurious = options.get("spurious", DEFAULT_SPURIOUS)
    if target == spurious:
        raise UserError(f"`target` and `spurious` are both {target!r}; choose two different attributes")
    if "metadata" in options:
        attr = T.resolve_file(options["metadata"], base, "`metadata`")
        try:
            folder, _ = _find_folder(base)
        except UserError:
            folder = base
    else:
        folder, attr = _find_folder(base)
    wanted = [target, spurious]
    if _is_txt(attr):
        fmt = "official TXT"
        table = _read_attr_txt(attr, wanted)
    else:
        fmt = "Kaggle CSV"
        header = T.read_header(attr, "CelebA attribute file")
        names = [h for h in header if h != "image_id"]
        for param, w in (("`target`", target), ("`spurious`", spurious)):
            if "image_id" in header and w not in names:
                raise UserError(f"{param} {w!r}: no such attribute in {attr}; attributes are: {T.suggest(w, names)}")
        table = T.read_table(attr, ["image_id", *wanted], what="CelebA attribute file",
                             hint="list_attr_celeba.csv has image_id and the 40 attribute columns")
    partition = _partition_file(attr, folder)
    split = _check_agreement(table, _read_partition(partition))
    ids = table.columns["image_id"]
    images = _image_folder(folder, ids[0])
    y = _binary(table, target)
    a = _binary(table, spurious)
    classes = [f"not {target}", target]
    attrs = [f"not {spurious}", spurious]
    return DatasetSpec(
        name="celeba",
        modality="image",
        items=[str(images / i) for i in ids],
        ids=list(ids),
        y=y, a=a, group=2 * y + a, split=split,
        class_names=classes, group_names=[f"{c}/{s}" for c in classes for s in attrs],
        source={
            "root": str(base), "dataset_folder": str(folder), "images": str(images),
            "files": [str(attr), str(partition)], "format": fmt,
            "target": target, "spurious": spurious,
            "label": f"y = {target} (-1 -> 0, 1 -> 1)", "attribute": f"a = {spurious} (-1 -> 0, 1 -> 1)",
            "group": "2*y + a", "options": dict(options),
        },
    )

