"""The registry of preprocessing kinds: every module of this package defines and registers one.

A new kind is one module here (a :class:`Kind` subclass with ``@register``) and its
test: this package imports each of its modules, so the ``preprocess`` choices and help,
`probe fit`'s knob flags, ``LinearHead``'s parameters and the split cache's key pick it
up without another edit.
"""

from __future__ import annotations

from base.packages import import_modules
from probe.preprocessing.base import (
    REGISTRY,
    Kind,
    Preprocessor,
    all_knobs,
    kind_names,
    register,
    steps_of,
)

import_modules(__name__, __path__)

__all__ = ["REGISTRY", "Kind", "Preprocessor", "all_knobs", "kind_names", "register", "steps_of"]


def preprocess_help() -> str:
    """The ``preprocess`` hyperparameter's help, from every registered kind."""
    kinds = ", ".join(REGISTRY[n].help for n in kind_names())
    return (f"Feature preprocessing, fitted on train: {kinds}, or a chain of them joined by + (pca+isr-mean), "
            "applied left to right.")
