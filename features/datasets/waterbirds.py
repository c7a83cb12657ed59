"""Waterbirds, as group_DRO (``waterbird_complete95_forest2water2/``) and WILDS (``waterbirds_v1.0/``) ship it.

``metadata.csv``: ``img_id,img_filename,y,split,place,place_filename``; ``y`` 1 waterbird,
0 landbird; ``place`` 1 water, 0 land; ``split`` 0 train, 1 val, 2 test; ``img_filename``
relative to the dataset folder. Group = ``2*y + place`` (the index group_DRO and WILDS use).
``root`` may be the dataset folder or the folder holding it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from base.errors import UserError
from features.datasets import _tables as T
from features.datasets.base import DatasetSpec
from features.datasets.registry import METADATA_OPTION, register

CLASS_NAMES = ["landbird", "waterbird"]
PLACE_NAMES = ["land", "water"]
GROUP_NAMES = [f"{c}/{p}" for c in CLASS_NAMES for p in PLACE_NAMES]
LAYOUTS = ("waterbird_complete95_forest2water2", "waterbirds_v1.0")
COLUMNS = ("img_filename", "y", "split", "place")
HINT = "Waterbirds' metadata.csv has columns img_id,img_filename,y,split,place,place_filename"


def dataset_folder(root: Path) -> Path:
    """``root`` itself, or the one standard Waterbirds folder (or other folder with metadata.csv) in it."""
    if (root / "metadata.csv").is_file():
        return root
    for name in LAYOUTS:
        if (root / name / "metadata.csv").is_file():
            return root / name
    found = sorted(p.parent for p in root.glob("*/metadata.csv"))
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise UserError(f"`root` {root}: several folders hold a metadata.csv ({', '.join(p.name for p in found)}); "
                        "point `root` at the Waterbirds folder itself")
    raise UserError(f"`root` {root}: no metadata.csv there, nor in {' or '.join(LAYOUTS)}/; point `root` at the "
                    "Waterbirds folder (the one holding metadata.csv and the image folders)")


@register("waterbirds", modalities=("image",), options=(METADATA_OPTION,))
def load(root: Path | None, **options: Any) -> DatasetSpec:
    base = T.resolve_root(root, "waterbirds", f"metadata.csv (or {LAYOUTS[0]}/ or {LAYOUTS[1]}/)")
    if "metadata" in options:
        meta = T.resolve_file(options["metadata"], base, "`metadata`")
        # Images stay where the dataset folder is; the override only replaces its table.
        try:
            folder = dataset_folder(base)
        except UserError:
            folder = base
    else:
        folder = dataset_folder(base)
        meta = folder / "metadata.csv"
    table = T.read_table(meta, COLUMNS, what="Waterbirds metadata file", hint=HINT)
    y = table.ints("y", (0, 1), hint="y is 1 for waterbird, 0 for landbird")
    place = table.ints("place", (0, 1), hint="place is 1 for water, 0 for land")
    split = table.splits("split")
    names = table.nonempty("img_filename", hint="img_filename is the image path relative to the dataset folder")
    T.check_unique(table, "img_filename")
    return DatasetSpec(
        name="waterbirds",
        modality="image",
        items=[str(folder / n) for n in names],
        ids=list(names),
        y=y, a=place, group=2 * y + place, split=split,
        class_names=list(CLASS_NAMES), group_names=list(GROUP_NAMES),
        source={
            "root": str(base), "dataset_folder": str(folder), "files": [str(meta)],
            "format": "Waterbirds metadata.csv (group_DRO / WILDS)",
            "label": "y (0 landbird, 1 waterbird)", "attribute": "a = place (0 land, 1 water)",
            "group": "2*y + place", "options": dict(options),
        },
    )
