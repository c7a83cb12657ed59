"""The registry of methods: every module of this package defines and registers some.

A new method is one module here (a class with ``@register``) and its test: this
package imports each of its modules, so the registry, `probe fit`'s flags and
help, the default grids, ``LinearHead``'s parameters and the report labels all
pick it up without another edit.

Also here, because they read this registry beside the others (preprocessing kinds,
domain sources): every fit-wide option a method or a preprocessing kind owns
(:func:`all_options`), and the help texts whose lists those registries own
(:func:`fill_help`).
"""

from __future__ import annotations

import re
from dataclasses import fields
from typing import Any

from base.errors import UserError
from base.packages import import_modules
from probe.methods.base import (
    COMMON,
    REGISTRY,
    GradientMethod,
    Method,
    all_params,
    convex_methods,
    get_method,
    method_names,
    register,
)
from probe.records.grid import Param
from probe.train.settings import Settings

import_modules(__name__, __path__, skip=("base", "protocols"))

__all__ = ["COMMON", "REGISTRY", "GradientMethod", "Method", "all_options", "all_params", "check_options",
           "checked_settings", "convex_methods", "display_name", "fill_help", "get_method", "method_names",
           "parse_methods", "register"]


def display_name(method: str) -> str:
    """A method's name in papers and report tables (its own name when unknown)."""
    cls = REGISTRY.get(method)
    return cls.display if cls is not None else method


def all_options() -> dict[str, tuple[str, Param]]:
    """Option name -> (its owner, its declaration): every method's and domain source's
    ``options`` and every preprocessing kind's knobs, the fit-wide settings that are not
    Settings fields."""
    from probe.domains import REGISTRY as SOURCES
    from probe.preprocessing import all_knobs

    out = {name: (kind.name, p) for name, (kind, p) in all_knobs().items()}
    owners = [(m, REGISTRY[m].options) for m in method_names()] + [(s.name, s.options) for s in SOURCES.values()]
    for owner, options in owners:
        for p in options:
            out.setdefault(p.name, (owner, p))
    return out


def check_options(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with every value checked by its declaration (None: the owner's default,
    dropped); an unknown name is a UserError listing the known ones."""
    known = all_options()
    out = {}
    for name, value in options.items():
        if name not in known:
            raise UserError(f"unknown setting {name!r}; choose from the settings of probe.train.settings.Settings "
                            f"or the options {', '.join(sorted(known))}")
        if value is not None:
            out[name] = known[name][1].check(value)
    return out


def checked_settings(device: Any = None, dtype: Any = None, **settings: Any) -> Settings:
    """Settings from keywords: Settings' own fields, and options that a method, a domain
    source or a preprocessing kind declares (``hessian_method``, ``pca_dim``, ...), each
    checked by its declaration; the domain source checked against its registry.

    ``device`` and ``dtype`` are stored as given: with None for both, nothing here loads
    torch, so a command can refuse a mistyped flag before paying for that import
    (:func:`probe.pipeline.make_settings` gives the real ones)."""
    from probe.domains import get_source

    own = {f.name for f in fields(Settings)} - {"device", "dtype", "options"}
    options = dict(settings.pop("options", None) or {})
    options.update({k: settings.pop(k) for k in list(settings) if k not in own})
    st = Settings(device=device, dtype=dtype, options=check_options(options), **settings)
    get_source(st.domain)
    return st


def parse_methods(methods: list[str] | str) -> list[str]:
    """Registered method names from a comma list or a list, in order, each once."""
    names = [m.strip() for m in methods.split(",")] if isinstance(methods, str) else list(methods)
    names = [m for m in names if m]
    if not names:
        raise UserError("`method`: no method given; choose from " + ", ".join(method_names()))
    for m in names:
        get_method(m)
    return list(dict.fromkeys(names))


def _registry_lists() -> dict[str, str]:
    from probe.domains import sources_help

    gradient = [REGISTRY[n] for n in method_names() if issubclass(REGISTRY[n], GradientMethod)]
    return {
        "convex_methods": convex_methods(),
        "domain_sources": sources_help(),
        "ce_pooled": ", ".join(m.name for m in gradient if m.ce_default == "pooled"),
        "ce_domain": ", ".join(m.name for m in gradient if m.ce_default == "domain"),
        "ce_own": ", ".join(m.display for m in gradient if m.ce_default is None) or "No method",
    }


def fill_help(text: str) -> str:
    """A declared help text with the lists that registries own filled in (``{convex_methods}``,
    ``{domain_sources}``, ``{ce_pooled}``, ``{ce_domain}``, ``{ce_own}``); other text is kept."""
    if "{" not in text:
        return text
    lists = _registry_lists()
    return re.sub(r"\{(\w+)\}", lambda m: lists.get(m.group(1), m.group(0)), text)
