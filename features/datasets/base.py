"""What every dataset adapter returns: rows, labels, groups, splits and items to encode."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from features.featureset import check_split_codes, check_unique_names

# An item is what the encoder consumes for one row: an image path, an in-memory
# PIL image, a text, or a (premise, hypothesis) pair for NLI.
Item = Any


@dataclass
class DatasetSpec:
    """A dataset ready for extraction. All arrays have one entry per row."""

    name: str
    modality: Literal["image", "text"]
    items: Sequence[Item]
    ids: list[str]
    y: np.ndarray  # int64 class index
    a: np.ndarray  # int64 spurious attribute, -1 where unknown
    group: np.ndarray  # int64
    split: np.ndarray  # int8: 0 train, 1 val, 2 test
    class_names: list[str]
    group_names: list[str]
    # Where the data came from and the options used (root, files, target attribute...):
    # stored as the `source` attribute of the feature file.
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.ids)
        for name in ("items", "y", "a", "group", "split"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"DatasetSpec {self.name}: {name} has {len(getattr(self, name))} rows, ids has {n}")
        self.y = np.asarray(self.y, dtype=np.int64)
        self.a = np.asarray(self.a, dtype=np.int64)
        self.group = np.asarray(self.group, dtype=np.int64)
        where = f"dataset {self.name!r}"
        check_split_codes(self.split, where)  # before the cast to int8, which would wrap 256 to 0 (train)
        self.split = np.asarray(self.split, dtype=np.int8)
        check_unique_names(self.class_names, "class_names", where)
        check_unique_names(self.group_names, "group_names", where)

    def __len__(self) -> int:
        return len(self.ids)
