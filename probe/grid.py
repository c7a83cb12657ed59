"""Hyperparameter flags: comma lists and ranges, validated, expanded to a grid.

Kept free of torch so that `probe fit --help` can show the defaults at once.

Range syntax (every grid flag):
    START:STOP:NUM       NUM values from START to STOP inclusive, evenly spaced
    START:STOP:NUM:log   NUM values from START to STOP inclusive, geometric
Values and ranges mix in one comma list (``0,1e1:1e3:3:log``); repeats are dropped.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from base.errors import UserError

RANGE_HELP = "a value, a comma list (1e2,1e3), or a range START:STOP:NUM (linear) / START:STOP:NUM:log"

#: per-head hyperparameters every gradient-trained method takes, with their defaults
COMMON_DEFAULTS: dict[str, list[Any]] = {
    "lr": [1e-2], "weight_decay": [1e-4], "anneal": [0], "seed": [0], "preprocess": ["standardize"],
}
#: small default grids for the method-specific hyperparameters, so `probe fit` without
#: flags is useful and quick (the demo fits erm + cma in seconds); a flag replaces them.
DEFAULT_GRIDS: dict[str, dict[str, list[Any]]] = {
    "cma": {"alpha": [1e2, 1e3, 1e4], "beta": [1e1, 1e2, 1e3]},
    "irm": {"lam": [1e1, 1e2, 1e3]},
    "vrex": {"lam": [1e0, 1e1, 1e2]},
    "fishr": {"lam": [1e1, 1e2, 1e3]},
    "groupdro": {"eta": [1e-3, 1e-2, 1e-1]},
}
#: defaults of the settings that shape the batch stream (one value per call)
DEFAULT_STEPS = 1000
DEFAULT_BATCH_SIZE = 512


def _fmt(values: list[Any]) -> str:
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def defaults_help(name: str) -> str:
    """'Default: cma 1e2,1e3,1e4; irm 10,100,1000' for a method hyperparameter."""
    parts = [f"{m} {_fmt(g[name])}" for m, g in DEFAULT_GRIDS.items() if name in g]
    return "Default: " + "; ".join(parts) + "." if parts else ""


def parse_values(flag: str, text: str | float | int, kind: Callable[[str], Any] = float,
                 minimum: float = 0.0) -> list[Any]:
    """Parse one flag's values; every mistake is a UserError naming the flag."""
    text = str(text).strip()
    if not text:
        raise UserError(f"{flag}: empty value; give {RANGE_HELP}")
    values: list[float] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            raise UserError(f"{flag}: empty item in {text!r}; give {RANGE_HELP}")
        if ":" in part:
            values.extend(_parse_range(flag, part))
        else:
            values.append(_number(flag, part))
    out = [check_value(flag, v, kind, minimum) for v in values]
    return list(dict.fromkeys(out))  # keep order, drop repeats


def check_value(flag: str, v: float, kind: Callable[[str], Any] = float, minimum: float = 0.0) -> Any:
    """One value of a grid flag: finite, >= minimum and, for ``kind=int``, whole."""
    if not math.isfinite(v) or v < minimum:
        raise UserError(f"{flag}: {v:g} is not allowed; values must be finite and >= {minimum:g}")
    if kind is int:
        if abs(v - round(v)) > 1e-9 * max(1.0, abs(v)):
            raise UserError(f"{flag}: {v:g} is not a whole number")
        return int(round(v))
    return float(v)


def _number(flag: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise UserError(f"{flag}: {text!r} is not a number; give {RANGE_HELP}") from None


def _parse_range(flag: str, text: str) -> list[float]:
    parts = text.split(":")
    if len(parts) not in (3, 4) or (len(parts) == 4 and parts[3] != "log"):
        raise UserError(f"{flag}: range {text!r} must be START:STOP:NUM or START:STOP:NUM:log")
    start, stop, num = _number(flag, parts[0]), _number(flag, parts[1]), _number(flag, parts[2])
    if not (math.isfinite(num) and num >= 1 and num == int(num)):
        raise UserError(f"{flag}: range {text!r} needs a whole NUM >= 1")
    if len(parts) == 4:
        if not (start > 0 and stop > 0):
            raise UserError(f"{flag}: log range {text!r} needs positive START and STOP")
        vals = np.geomspace(start, stop, int(num))
    else:
        vals = np.linspace(start, stop, int(num))
    # 12 significant digits: 1e1:1e3:3:log gives 100.0, not 99.99999999999997,
    # so results and selected hyperparameters read as typed.
    return [float(f"{v:.12g}") for v in vals]


def expand(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """The Cartesian product of the values, in a stable order (last key fastest)."""
    keys = list(grid)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(grid[k] for k in keys))]
