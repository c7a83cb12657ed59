"""Craft feature files by hand with h5py, independently of probe's writer,
so reader and CLI checks are tested against the schema itself."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

GROUP_NAMES = ["small/blue", "small/green", "large/blue", "large/green"]
CLASS_NAMES = ["small", "large"]


def toy_arrays(n_per_group_split: int = 12, dim: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    """A tiny spurious-correlation problem: every (group, split) cell has rows."""
    rng = np.random.default_rng(seed)
    rows = []
    for split in (0, 1, 2):
        for g in range(4):
            for _ in range(n_per_group_split):
                rows.append((g // 2, g % 2, g, split))
    y, a, group, split = (np.array(c) for c in zip(*rows, strict=True))
    feats = rng.normal(size=(len(y), dim)).astype(np.float32)
    feats[:, 0] += 2.0 * y  # a learnable core direction
    feats[:, 1] += 2.0 * a  # and a spurious one
    return {"features": feats, "y": y.astype(np.int64), "a": a.astype(np.int64),
            "group": group.astype(np.int64), "split": split.astype(np.int8)}


def write_feature_file(path: Path, arrays: dict[str, np.ndarray] | None = None, *,
                       schema: str = "probe-features/1", complete: bool = True,
                       class_names: list[str] | None = None, group_names: list[str] | None = None,
                       drop: tuple[str, ...] = (), dataset: str = "toy", prompts: bool = False) -> Path:
    """``prompts``: with a zero-shot classifier (random unit rows) as `probe extract --prompts` stores it."""
    arrays = dict(arrays or toy_arrays())
    n = len(arrays["y"])
    with h5py.File(path, "w") as h5:
        for key, value in arrays.items():
            if key not in drop:
                h5.create_dataset(key, data=value)
        if "id" not in drop:
            h5.create_dataset("id", data=[f"row{i}" for i in range(n)], dtype=h5py.string_dtype())
        h5.attrs.update({
            "schema": schema, "dataset": dataset, "encoder": "none", "weights": "none",
            "preprocess": "none", "created": "2026-01-01T00:00:00", "probe_version": "test",
            "class_names": json.dumps(class_names or CLASS_NAMES),
            "group_names": json.dumps(group_names or GROUP_NAMES),
            "complete": complete, "rows_written": n if complete else n // 2,
            "source": json.dumps({"made_by": "tests/h5craft.py"}),
        })
        if prompts:
            rows = np.random.default_rng(1).normal(size=(len(class_names or CLASS_NAMES), arrays["features"].shape[1]))
            h5.create_dataset("prompt_embeddings", data=(rows / np.linalg.norm(rows, axis=1, keepdims=True))
                              .astype(np.float32))
            h5.attrs["prompts"] = json.dumps({"templates": ["a photo of a {}."], "class_names": CLASS_NAMES,
                                              "logit_scale": 100.0, "embedding": "random unit rows"})
    return path
