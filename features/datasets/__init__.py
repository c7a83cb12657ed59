"""Dataset adapters, one module each, selected by name.

Each adapter module exposes ``load(root: Path | None, **options) -> DatasetSpec``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from base.errors import UserError
from features.datasets.base import DatasetSpec

# name -> module; imported lazily so `probe --help` stays fast.
ADAPTERS = {
    "demo": "features.datasets.demo",
    "waterbirds": "features.datasets.waterbirds",
    "celeba": "features.datasets.celeba",
    "multinli": "features.datasets.multinli",
    "table": "features.datasets.table",
}


def load_dataset(name: str, root: Path | None = None, **options: Any) -> DatasetSpec:
    if name not in ADAPTERS:
        raise UserError(f"unknown dataset {name!r}; choose one of: {', '.join(ADAPTERS)}")
    module = importlib.import_module(ADAPTERS[name])
    return module.load(root, **options)


__all__ = ["ADAPTERS", "DatasetSpec", "load_dataset"]
