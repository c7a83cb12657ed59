"""The registry of methods: every module of this package defines and registers some.

A new method is one module here (a class with ``@register``) and its test: this
package imports each of its modules, so the registry, `probe fit`'s flags and
help, the default grids, ``LinearHead``'s parameters and the report labels all
pick it up without another edit.
"""

from __future__ import annotations

import importlib
import pkgutil

from probe.methods.base import (
    COMMON,
    REGISTRY,
    GradientMethod,
    Method,
    all_params,
    get_method,
    method_names,
    register,
)

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["COMMON", "REGISTRY", "GradientMethod", "Method", "all_params", "get_method", "method_names", "register"]


def display_name(method: str) -> str:
    """A method's name in papers and report tables (its own name when unknown)."""
    cls = REGISTRY.get(method)
    return cls.display if cls is not None else method
