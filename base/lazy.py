"""Lazily imported modules, so that declarations can be read without importing torch.

``torch = lazy_import("torch")`` binds a module object at once and runs torch's
own import (seconds) at its first attribute access. Registries, option lists and
``--help`` then cost nothing; the first computation pays for the import, as it
would anyway. Only third-party modules are imported this way: our own modules
import each other plainly, so that their dependencies stay visible.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType


def lazy_import(name: str) -> ModuleType:
    """The module ``name``, imported at its first attribute access (a top-level package)."""
    if name in sys.modules:
        return sys.modules[name]
    if "." in name:
        # find_spec would import the parent packages now, which defeats the purpose.
        raise ValueError(f"lazy_import takes a top-level package, not {name!r}; use its attributes")
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module


def is_loaded(name: str) -> bool:
    """Whether ``name`` has really been imported (not merely bound lazily)."""
    module = sys.modules.get(name)
    return module is not None and not isinstance(module, importlib.util._LazyModule)
