"""Registries that fill themselves: a package whose modules each register something imports
them all when it is imported, so its registry is complete wherever it is read."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable


def import_modules(package: str, path: Iterable[str], skip: Iterable[str] = ("base",)) -> None:
    """Import every module of ``package`` (its ``__path__`` is ``path``) but those in ``skip``."""
    skipped = set(skip)
    for module in pkgutil.iter_modules(list(path)):
        if module.name not in skipped:
            importlib.import_module(f"{package}.{module.name}")
