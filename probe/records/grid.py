"""Hyperparameters: declared once (:class:`Param`), parsed from text, checked, expanded to a grid.

Kept free of torch so that `probe fit --help` can show the declarations at once.

Range syntax (every grid value given as text):
    START:STOP:NUM       NUM values from START to STOP inclusive, evenly spaced
    START:STOP:NUM:log   NUM values from START to STOP inclusive, geometric
Values and ranges mix in one comma list (``0,1e1:1e3:3:log``); repeats are dropped.

Errors name the parameter in backquotes (base.errors), so the CLI shows its flag.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from base.errors import UserError

RANGE_HELP = "a value, a comma list (1e2,1e3), or a range START:STOP:NUM (linear) / START:STOP:NUM:log"
#: the most configurations one grid may expand to before anything is allocated
MAX_GRID_SIZE = 1_000_000


@dataclass(frozen=True)
class OfSteps:
    """A default grid value given as a fraction of the fit's steps (an anneal that keeps
    its meaning whatever ``steps`` is); resolved to a whole step count by ``resolve``."""

    fraction: float

    def resolve(self, steps: int) -> int:
        return int(round(self.fraction * steps))

    def __str__(self) -> str:
        return f"{self.fraction:g}×steps"


def resolve(values: Iterable[Any], steps: int) -> list[Any]:
    """Grid values with every OfSteps made a step count (repeats dropped)."""
    return list(dict.fromkeys(v.resolve(steps) if isinstance(v, OfSteps) else v for v in values))


@dataclass(frozen=True)
class Param:
    """One per-head hyperparameter: its type, allowed values, default and default grid.

    ``default`` is the value of a single head (the estimator's default); ``grid`` the
    values `probe fit` searches when the user gives none. ``choices`` restricts a
    text parameter (``preprocess``); numbers must be finite and ``>= minimum``.
    """

    name: str
    help: str
    kind: type = float  # float, int or str
    default: Any = None
    grid: tuple[Any, ...] = ()
    minimum: float = 0.0
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    #: the choices read from a registry each time (a kind registered later is allowed too)
    choices_from: Callable[[], tuple[str, ...]] | None = None
    chain: bool = False  # a text value may join several choices with + (a preprocessing chain)
    symbol: str = ""  # how papers write it (α), for labels
    #: reports show its value whenever it is non-zero, searched or not (a term off by default)
    label_nonzero: bool = False
    #: random search's distribution (``--search random:N``): ("log", lo, hi) log-uniform or
    #: ("uniform", lo, hi); without one, a draw picks among the default grid's values
    search: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in (float, int, str):
            raise TypeError(f"Param {self.name}: kind must be float, int or str")
        if self.search and (len(self.search) != 3 or self.search[0] not in ("log", "uniform")
                            or not self.search[1] < self.search[2] or (self.search[0] == "log" and self.search[1] <= 0)):
            raise ValueError(f"Param {self.name}: search {self.search} is not (log|uniform, lo, hi)")
        for v in (self.default, *self.grid, *self.search[1:]):
            if isinstance(v, OfSteps):
                if not 0 <= v.fraction <= 1:
                    raise ValueError(f"Param {self.name}: {v} is not a fraction of the steps")
            elif v is not None:
                self.check(v)

    def sample(self, rng: np.random.Generator, steps: int) -> Any:
        """One random-search draw (``search``; else one of the default grid's values), with
        three significant digits, checked like a value given."""
        if self.search:
            kind, lo, hi = self.search
            v = math.exp(rng.uniform(math.log(lo), math.log(hi))) if kind == "log" else rng.uniform(lo, hi)
            return self.check(float(f"{v:.3g}"))
        values = resolve(self.default_grid, steps)
        return values[int(rng.integers(len(values)))]

    @property
    def allowed(self) -> tuple[str, ...]:
        """The text values allowed (empty: any)."""
        return self.choices_from() if self.choices_from is not None else self.choices

    @property
    def default_grid(self) -> list[Any]:
        return list(self.grid) if self.grid else [self.default]

    def check(self, value: Any) -> Any:
        """One value, validated and converted to ``kind``."""
        if self.kind is str:
            parts = value.split("+") if isinstance(value, str) and self.chain else [value]
            allowed = self.allowed
            if not isinstance(value, str) or (allowed and any(p not in allowed for p in parts)):
                joined = " (or a chain joined by +)" if self.chain else ""
                raise UserError(f"`{self.name}` {value!r} is not one of: {', '.join(allowed)}{joined}")
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise UserError(f"`{self.name}`: {value!r} is not a number")
        if self.kind is int and isinstance(value, (int, np.integer)):
            # compared as integers: a float holds no integer past 2**53 exactly, so 2**63 would
            # pass as 2**63 - 1 (a seed that overflows torch's 64-bit seeding)
            return self._within(int(value))
        v = float(value)
        if not math.isfinite(v):
            self._within(v)
        if self.kind is int:
            if abs(v - round(v)) > 1e-9 * max(1.0, abs(v)):
                raise UserError(f"`{self.name}`: {v:g} is not a whole number")
            return self._within(int(round(v)))
        return self._within(v)

    def _within(self, v: float | int) -> Any:
        """``v`` when it is finite and within the bounds (compared exactly), else a UserError."""
        if (isinstance(v, float) and not math.isfinite(v)) or v < self.minimum or (
                self.maximum is not None and v > self.maximum):
            bound = f">= {_shown(self.minimum)}" + ("" if self.maximum is None else f" and <= {_shown(self.maximum)}")
            raise UserError(f"`{self.name}`: {_shown(v)} is not allowed; values must be finite and {bound}")
        return v

    def option(self, options: dict[str, Any]) -> Any:
        """This declaration's value among a fit's ``options`` (checked), or its default when
        not given (a fit-wide option: one value, not a grid)."""
        value = options.get(self.name)
        return self.default if value is None else self.check(value)

    def values(self, given: Any) -> list[Any]:
        """Values from text (``"1e2,1e3"``, a range) or from a value or a sequence of values."""
        if isinstance(given, str):
            return self.parse(given)
        items = list(given) if isinstance(given, (list, tuple)) else [given]
        if not items:
            raise UserError(f"`{self.name}`: no values given")
        return list(dict.fromkeys(self.check(v) for v in items))

    def parse(self, text: str) -> list[Any]:
        """Parse one comma list; every mistake is a UserError naming the parameter."""
        text = str(text).strip()
        if not text:
            raise UserError(f"`{self.name}`: empty value; give {self._syntax}")
        out: list[Any] = []
        for part in (p.strip() for p in text.split(",")):
            if not part:
                raise UserError(f"`{self.name}`: empty item in {text!r}; give {self._syntax}")
            if self.kind is str:
                out.append(self.check(part))
            elif ":" in part:
                out.extend(self.check(v) for v in self._range(part))
            else:
                out.append(self.check(self._number(part)))
        return list(dict.fromkeys(out))  # keep order, drop repeats

    @property
    def _syntax(self) -> str:
        return f"a comma list of {', '.join(self.allowed)}" if self.kind is str else RANGE_HELP

    def _number(self, text: str) -> float | int:
        if self.kind is int:  # a whole number as text stays exact (no float on the way)
            with contextlib.suppress(ValueError):
                return int(text)
        try:
            return float(text)
        except ValueError:
            raise UserError(f"`{self.name}`: {text!r} is not a number; give {RANGE_HELP}") from None

    def _range(self, text: str) -> list[float]:
        parts = text.split(":")
        if len(parts) not in (3, 4) or (len(parts) == 4 and parts[3] != "log"):
            raise UserError(f"`{self.name}`: range {text!r} must be START:STOP:NUM or START:STOP:NUM:log")
        start, stop, num = (float(self._number(p)) for p in parts[:3])  # spaced as floats
        if not (math.isfinite(num) and num >= 1 and num == int(num)):
            raise UserError(f"`{self.name}`: range {text!r} needs a whole NUM >= 1")
        if num > MAX_GRID_SIZE:
            raise UserError(f"`{self.name}`: range {text!r} has {num:.0f} values; at most {MAX_GRID_SIZE} "
                            "configurations can be planned")
        if len(parts) == 4:
            if not (start > 0 and stop > 0):
                raise UserError(f"`{self.name}`: log range {text!r} needs positive START and STOP")
            vals = np.geomspace(start, stop, int(num))
        else:
            vals = np.linspace(start, stop, int(num))
        # 12 significant digits: 1e1:1e3:3:log gives 100.0, not 99.99999999999997,
        # so results and selected hyperparameters read as typed.
        return [float(f"{v:.12g}") for v in vals]


def _shown(v: float | int) -> str:
    """A bound or a value as typed: integers in full (2**63 - 1 is not 9.22337e+18)."""
    return str(v) if isinstance(v, int) else f"{v:g}"


def format_values(values: Iterable[Any]) -> str:
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def grid_size(grid: dict[str, Sequence[Any]]) -> int:
    return math.prod(len(v) for v in grid.values())


def expand(grid: dict[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """The Cartesian product of the values, in a stable order (last key fastest)."""
    size = grid_size(grid)
    if size > MAX_GRID_SIZE:
        shape = " × ".join(f"{len(v)} {k}" for k, v in grid.items() if len(v) > 1)
        raise UserError(f"the grid has {size:,} configurations ({shape}); at most {MAX_GRID_SIZE:,} can be "
                        "planned, so give fewer values")
    keys = list(grid)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(grid[k] for k in keys))]
