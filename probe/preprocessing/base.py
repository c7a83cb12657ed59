"""What a preprocessing kind is: one registered class declaring its name, its help, its
knobs (fit-wide options such as ``pca_dim``, with their constraints), how it is fitted
and applied, and the state tensors a head file records (DomainBed's registry style, as
:mod:`probe.methods.base` declares methods).

A preprocessing is one kind or a chain of kinds joined by ``+`` (``pca+isr-mean``),
applied left to right, each fitted on the training rows as the previous ones left them.
:class:`Preprocessor` is a fitted chain. Everything that lists kinds or knobs (the
``preprocess`` hyperparameter's choices and help, `probe fit`'s flags, ``LinearHead``'s
parameters, the split cache's key) reads this registry, so a new kind is one module of
this package and its test.

State tensors (the ``pre.*`` entries of a head file) are named by the kind's ``state``;
in a chain each is prefixed by its step's position (``1.spurious``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from base.errors import UserError
from base.lazy import lazy_import
from probe.records.grid import Param

torch = lazy_import("torch")


class Kind:
    """One preprocessing kind's declarations and arithmetic. Subclasses set the class
    attributes, override what they need, and register with :func:`register`."""

    name: ClassVar[str]
    help: ClassVar[str]  # one clause for the `preprocess` help
    #: fit-wide options (one value per fit, not a grid dimension); None means the kind's own rule
    knobs: ClassVar[tuple[Param, ...]] = ()
    #: names of the tensors ``fit`` returns: what a head file records for this step
    state: ClassVar[tuple[str, ...]] = ()
    #: labels beyond the classes its fit reads (probe.records.regimes.LABELS)
    reads: ClassVar[frozenset[str]] = frozenset()
    #: whether ``apply`` returns a fresh tensor (so later steps may work in place)
    fresh: ClassVar[bool] = True

    @classmethod
    def fit(cls, X: torch.Tensor, y: torch.Tensor, a: torch.Tensor, knobs: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The state fitted on the training rows ``X`` (labels ``y``, spurious attribute ``a``)."""
        return {}

    @classmethod
    def fit_rows(cls, source: torch.Tensor, rows: torch.Tensor, dtype: torch.dtype,
                 knobs: dict[str, Any]) -> dict[str, torch.Tensor] | None:
        """The state fitted on ``source[rows]`` without gathering the rows, for a kind that
        can (streaming moments); None: the caller gathers the rows and calls ``fit``."""
        return None

    @classmethod
    def apply(cls, X: torch.Tensor, state: dict[str, torch.Tensor], owned: bool) -> torch.Tensor:
        """The step on ``X``; ``owned``: X is the caller's scratch and may be overwritten."""
        return X

    @classmethod
    def out_dim(cls, d: int, n_train: int, knobs: dict[str, Any], state: dict[str, torch.Tensor] | None) -> int:
        """Columns after the step, from ``d`` before it (``state`` once fitted, else None)."""
        return d

    @classmethod
    def check(cls, d: int, n_train: int, knobs: dict[str, Any], where: str) -> None:
        """Refuse, with a UserError naming the knob, values this step could not honour on
        ``d`` columns and ``n_train`` training rows (rather than record one number and use
        another)."""

    @classmethod
    def seeded(cls, knobs: dict[str, Any]) -> bool:
        """Whether ``fit`` with these knobs draws random numbers from the cohort's seed (given
        to it as ``knobs["seed"]``): then each seed has its own fitted state."""
        return False


REGISTRY: dict[str, type[Kind]] = {}


def register(cls: type[Kind]) -> type[Kind]:
    """Class decorator: add a kind to the registry, checking its declarations."""
    for attr in ("name", "help"):
        if not isinstance(getattr(cls, attr, None), str):
            raise TypeError(f"{cls.__name__} must declare {attr}")
    if cls.name in REGISTRY or "+" in cls.name:
        raise ValueError(f"preprocessing {cls.name!r} is registered twice or has a + in its name")
    for other in REGISTRY.values():  # a knob belongs to one kind
        shared = {k.name for k in cls.knobs} & {k.name for k in other.knobs}
        if shared:
            raise ValueError(f"{cls.name}: knobs {sorted(shared)} are already {other.name}'s")
    REGISTRY[cls.name] = cls
    return cls


@register
class Identity(Kind):
    name = "none"
    help = "none (the features as stored)"
    fresh = False

    @classmethod
    def fit_rows(cls, source, rows, dtype, knobs):
        return {}  # nothing to fit: the training rows need not be gathered (a copy of all of them)


def kind_names() -> tuple[str, ...]:
    """Every registered kind, ``none`` first, then in the order they registered."""
    return tuple(REGISTRY)


def steps_of(kind: str) -> list[str]:
    """The kinds of a preprocessing (``pca+isr-mean`` -> [pca, isr-mean]); a UserError if unknown."""
    steps = [s.strip() for s in str(kind).split("+")]
    bad = [s for s in steps if s not in REGISTRY]
    if bad or (len(steps) > 1 and "none" in steps):
        raise UserError(f"`preprocess` {kind!r} is unknown; choose one of {', '.join(REGISTRY)}, or a chain of "
                        "them joined by + (pca+isr-mean)")
    return steps


def all_knobs() -> dict[str, tuple[type[Kind], Param]]:
    """Knob name -> (its kind, its declaration), over every registered kind."""
    return {k.name: (cls, k) for cls in REGISTRY.values() for k in cls.knobs}


def knob_values(kinds: Iterable[str], options: dict[str, Any]) -> dict[str, Any]:
    """The knobs of ``kinds`` read from ``options`` (checked by their declarations; a knob
    not given is None, its kind's own rule)."""
    out = {}
    for name in kinds:
        for knob in REGISTRY[name].knobs:
            value = options.get(knob.name)
            out[knob.name] = None if value is None else knob.check(value)
    return out


class Preprocessor:
    """A fitted (or to-be-fitted) preprocessing chain: its kinds, knobs and state.

    ``Preprocessor("pca+isr-mean", pca_dim=4, isr_class=0)``; a head file's state is
    given as ``state`` to apply a chain fitted elsewhere. Knobs of kinds not in the chain
    are ignored, so a fit's whole options can be passed (``**settings.options``). ``seed``:
    the cohort's seed, for a kind that draws random numbers (``Kind.seeded``).
    """

    def __init__(self, kind: str, state: dict[str, Any] | None = None, seed: int | None = None,
                 **options: Any) -> None:
        self.kind = kind
        self.steps = steps_of(kind)
        self.knobs = knob_values(self.steps, options)
        self.state: dict[str, Any] = dict(state or {})
        self.seed = seed if self.seeded() else None  # a chain that draws nothing is one fit for every seed

    def seeded(self) -> bool:
        """Whether fitting this chain draws random numbers from the cohort's seed."""
        return any(REGISTRY[step].seeded(self.knobs) for step in self.steps)

    def key(self) -> tuple:
        """What decides the fitted state besides the rows: the chain, its knobs (the split
        cache's key, derived from the declarations, so no knob can be forgotten) and the
        seed of a chain that draws from it."""
        return (self.kind, tuple(sorted(self.knobs.items())), self.seed)

    def _key(self, i: int, name: str) -> str:
        return name if len(self.steps) == 1 else f"{i}.{name}"

    def _step_state(self, i: int, step: str) -> dict[str, Any]:
        return {n: self.state[self._key(i, n)] for n in REGISTRY[step].state if self._key(i, n) in self.state}

    def fit(self, X: torch.Tensor, y: torch.Tensor, a: torch.Tensor) -> Preprocessor:
        """Fit on the training rows ``X`` (labels ``y``, spurious attribute ``a``)."""
        self.state = {}
        for i, step in enumerate(self.steps):
            fitted = REGISTRY[step].fit(X, y, a, {**self.knobs, "seed": self.seed})
            self.state.update({self._key(i, k): v for k, v in fitted.items()})
            X = REGISTRY[step].apply(X, fitted, owned=False)
        return self

    def fit_rows(self, source: torch.Tensor, rows: torch.Tensor, y: torch.Tensor, a: torch.Tensor,
                 dtype: torch.dtype) -> Preprocessor:
        """Fit on ``source[rows]`` (``y``, ``a`` indexed like ``source``); a single kind that
        can fit without the rows gathered does so (standardize's streaming moments, nothing
        for none and l2), other kinds and chains take one copy of the training rows."""
        if len(self.steps) == 1:
            fitted = REGISTRY[self.steps[0]].fit_rows(source, rows, dtype, self.knobs)
            if fitted is not None:
                self.state = dict(fitted)
                return self
        return self.fit(source.index_select(0, rows).to(dtype), y[rows], a[rows])

    def out_dim(self, d: int, n_train: int = 0) -> int:
        """Columns after the chain (fitted: from its state; else from the knobs' rules)."""
        for i, step in enumerate(self.steps):
            d = REGISTRY[step].out_dim(d, n_train, self.knobs, self._step_state(i, step) or None)
        return d

    def check(self, d: int, n_train: int, where: str) -> None:
        """Refuse knobs the chain could not honour on ``d`` columns and ``n_train`` rows."""
        for step in self.steps:
            REGISTRY[step].check(d, n_train, self.knobs, where)
            d = REGISTRY[step].out_dim(d, n_train, self.knobs, None)

    def transform(self, X: torch.Tensor, owned: bool = False) -> torch.Tensor:
        """The fitted steps applied to ``X``. ``owned=True`` (X is a fresh copy nobody else
        reads, such as a gather of rows) computes in place: the same values without an
        out-of-place temporary per step, which on a CPU costs more than the arithmetic."""
        for i, step in enumerate(self.steps):
            X = REGISTRY[step].apply(X, self._step_state(i, step), owned)
            owned = owned or REGISTRY[step].fresh
        return X
