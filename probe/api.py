"""The Python API in one import: what a notebook or a script needs.

* :func:`fit_grid` (``probe.pipeline``): `probe fit` as a function, every method's
  grid in one batched run, selected by validation, optionally written as a run folder;
* :func:`make_settings`: keyword settings checked into a ``Settings``;
* :class:`LinearHead` (``probe.estimator``): one head, scikit-learn style.
"""

from __future__ import annotations

from probe.estimator import LinearHead
from probe.pipeline import check_grid, fit_grid, make_settings, parse_methods

__all__ = ["LinearHead", "check_grid", "fit_grid", "make_settings", "parse_methods"]
