"""The in-memory form of a feature file (:class:`FeatureSet`): what stage 2 reads.

Plain arrays and names, no h5py: :mod:`features.store` reads and writes the files, and
code that only handles a FeatureSet (stage 2's records, the command line's help) need
not load the file machinery.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from base.errors import UserError
from features.schema import PROMPT_ATTR, SPLIT_NAMES, SPLITS


def check_split_codes(split: np.ndarray, where: str) -> None:
    """Refuse a split code outside the schema (read as it is stored: cast to int8 first, 256
    would become 0, train)."""
    bad = ~np.isin(np.asarray(split), list(SPLIT_NAMES))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise UserError(f"{where}: split code {np.asarray(split)[row]} at row {row} ({int(bad.sum())} row(s) in "
                        "all) is not 0 (train), 1 (val) or 2 (test)")


def check_unique_names(names: list[str], attr: str, where: str) -> None:
    """Refuse a name list with a repeat: results are keyed by name, so two classes or groups
    of one name would be merged (the per-group table losing one while the worst group counts it)."""
    first: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in first:
            raise UserError(f"{where}: {attr} has {name!r} twice (entries {first[name]} and {i}); every name must "
                            "be unique")
        first[name] = i


@dataclass
class FeatureSet:
    """Everything stage 2 needs from a feature file, in memory."""

    features: np.ndarray  # (N, D) float32
    y: np.ndarray  # (N,) int64
    a: np.ndarray  # (N,) int64
    group: np.ndarray  # (N,) int64
    split: np.ndarray  # (N,) int8
    ids: np.ndarray  # (N,) object (str)
    class_names: list[str]
    group_names: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    path: str = ""
    # (C, D) unit rows of the zero-shot classifier, when extracted with prompts (features.prompts)
    prompt_embeddings: np.ndarray | None = None

    def __post_init__(self) -> None:
        where = self.path or "the features"
        check_unique_names(self.class_names, "class_names", where)
        check_unique_names(self.group_names, "group_names", where)
        check_split_codes(self.split, where)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_groups(self) -> int:
        return len(self.group_names)

    def split_mask(self, name: str) -> np.ndarray:
        return self.split == SPLITS[name]

    def provenance(self) -> dict[str, Any]:
        """What produced these features, for every result that uses them."""
        keys = ("schema", "dataset", "encoder", "weights", "preprocess", "created", "probe_version", "git_commit",
                "source", PROMPT_ATTR)
        prov = {k: self.attrs[k] for k in keys if k in self.attrs}
        prov["path"] = self.path
        prov["rows"] = int(len(self.y))
        prov["dim"] = int(self.features.shape[1])
        return prov
