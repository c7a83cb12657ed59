"""What a feature file was made from, as fingerprints an extraction stores and checks on every rerun.

``rows_sha256`` (what the rows are: ids, labels, splits, names) is part of a file's
identity: a resume or merge never mixes rows. ``items_sha256`` (what the rows are
made from now: image files' sizes and modification times, or the texts) is checked
only where a run would reuse rows of its own output, so shards made on machines
with other copies of the images (other file times) still merge.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from features.datasets.base import DatasetSpec


def rows_fingerprint(spec: DatasetSpec) -> str:
    """sha256 of what the rows are (ids, labels, splits, names): not of the pixels."""
    h = hashlib.sha256()
    h.update("\x00".join(spec.ids).encode("utf-8"))
    for arr in (spec.y, spec.a, spec.group, spec.split):
        h.update(np.ascontiguousarray(arr).tobytes())
    h.update(json.dumps([spec.class_names, spec.group_names]).encode("utf-8"))
    return h.hexdigest()


def _stat_key(path: str) -> str:
    if not path:
        return "in memory"
    try:
        st = os.stat(path)
    except (OSError, TypeError, ValueError):
        return "missing"
    return f"{st.st_size}:{st.st_mtime_ns}"


class ItemsFingerprint:
    """sha256 of what rows are made from now, batch after batch: each image file's size and
    modification time, or each text itself. Empty ("") for items held in memory.

    Cheap (one stat per image, nothing read). An extraction stores the digest of the
    batches it has written (``items_sha256``), so a rerun can tell that files it
    would reuse rows of changed since: the images of a complete file, or those of
    the rows an unfinished file already holds (a bad image further on may be fixed
    before resuming).
    """

    def __init__(self, spec: DatasetSpec) -> None:
        self.spec = spec
        self.enabled = isinstance(spec.items, (list, tuple))  # not generated on the fly
        self._hash = hashlib.sha256()

    def add(self, bounds: list[tuple[int, int]]) -> ItemsFingerprint:
        if not self.enabled:
            return self
        items = self.spec.items
        rows = [i for s, e in bounds for i in range(s, e)]
        if self.spec.modality == "image":
            paths = [os.fspath(items[i]) if isinstance(items[i], (str, os.PathLike)) else "" for i in rows]
            if len(paths) > 4096:  # threads: on a network filesystem each stat is a round trip
                with ThreadPoolExecutor(8) as pool:
                    keys = list(pool.map(_stat_key, paths))
            else:
                keys = [_stat_key(p) for p in paths]
            for path, key in zip(paths, keys, strict=True):
                self._hash.update(f"{path}\x00{key}\x00".encode("utf-8", "surrogateescape"))
        else:
            for i in rows:
                self._hash.update(json.dumps(items[i], default=str).encode("utf-8", "surrogateescape") + b"\x00")
        return self

    def hexdigest(self) -> str:
        return self._hash.hexdigest() if self.enabled else ""


def changed_items(found: dict[str, Any], now: ItemsFingerprint) -> bool:
    """Whether a file's ``items_sha256`` disagrees with ``now`` (files written before it existed: no)."""
    old, new = found.get("items_sha256"), now.hexdigest()
    return bool(old and new and old != new)
