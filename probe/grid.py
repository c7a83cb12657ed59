"""Hyperparameter flags: comma lists and ranges, validated, expanded to a grid."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from probe.errors import UserError

RANGE_HELP = "a value, a comma list (1e2,1e3), or a range START:STOP:NUM (linear) / START:STOP:NUM:log"


def parse_values(flag: str, text: str | float | int, kind: Callable[[str], Any] = float,
                 minimum: float = 0.0) -> list[Any]:
    """Parse one flag's values; every mistake is a UserError naming the flag."""
    text = str(text).strip()
    if not text:
        raise UserError(f"{flag}: empty value; give {RANGE_HELP}")
    values: list[float] = []
    for part in text.split(","):
        part = part.strip()
        if ":" in part:
            values.extend(_parse_range(flag, part))
        else:
            values.append(_number(flag, part))
    out = []
    for v in values:
        if not math.isfinite(v) or v < minimum:
            raise UserError(f"{flag}: {v:g} is not allowed; values must be finite and >= {minimum:g}")
        if kind is int:
            if abs(v - round(v)) > 1e-9:
                raise UserError(f"{flag}: {v:g} is not a whole number")
            out.append(int(round(v)))
        else:
            out.append(float(v))
    return list(dict.fromkeys(out))  # keep order, drop repeats


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
    if num < 1 or num != int(num):
        raise UserError(f"{flag}: range {text!r} needs a whole NUM >= 1")
    if len(parts) == 4:
        if start <= 0 or stop <= 0:
            raise UserError(f"{flag}: log range {text!r} needs positive START and STOP")
        return [float(v) for v in np.geomspace(start, stop, int(num))]
    return [float(v) for v in np.linspace(start, stop, int(num))]


def expand(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """The Cartesian product of the values, in a stable order (last key fastest)."""
    keys = list(grid)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(grid[k] for k in keys))]
