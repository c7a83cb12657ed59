"""The registry of domain sources: every module of this package defines and registers some.

A new source is one module here (a :class:`DomainSource` with ``@register``) and its
test: `--domain`'s choices and help, and the checks of what a run may read, pick it up.
"""

from __future__ import annotations

from base.packages import import_modules
from probe.domains.base import (
    LABELS,
    REGISTRY,
    DomainSource,
    get_source,
    narrow,
    register,
    resolve,
    restrict,
    source_names,
)

import_modules(__name__, __path__)

__all__ = ["LABELS", "REGISTRY", "DomainSource", "get_source", "narrow", "register", "resolve", "restrict", "source_names"]


def sources_help() -> str:
    """`--domain`'s choices, each with its clause."""
    return ", ".join(REGISTRY[n].help for n in source_names())
