"""What a method is: one registered class declaring its hyperparameters, its display
name, its memory cost and how it is fitted (DomainBed's algorithms and hparams
registry in one place; timm's ``@register_model``: a method registers where it is
defined, and every list — CLI flags and help, default grids, ``LinearHead``'s
parameters, report labels, the memory planner — is read from the registry).

Two kinds:

* :class:`GradientMethod`: a loss over a grid of heads, trained by the batched
  trainer (``probe.train``). A subclass declares its penalty terms and the
  hyperparameter weighting each (``penalties``), and computes them from one
  logits pass of the whole grid (``penalty_terms``).
* :class:`Method` with its own ``fit`` (closed form or scikit-learn, as DFR).

Declarations import no torch (``--help`` reads them); the tensor work happens in
methods called during a fit.

Cross-entropy weighting (``ce_weighting``), the same for every gradient method but GroupDRO:

* ``"pooled"``: the natural-distribution mean CE. Minibatches are domain-balanced,
  so each domain's mean CE is weighted by its share of the training rows
  (importance weights); the expectation equals the plain mean over training rows.
* ``"domain"``: the mean of the per-domain mean CEs (every domain weighs the same).
"""

from __future__ import annotations

import copy
import json
import zlib
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from base.errors import UserError
from probe.preprocessing import kind_names, preprocess_help
from probe.records.grid import OfSteps, Param, expand, format_values, resolve
from probe.train.settings import CE_WEIGHTINGS, user_settings

if TYPE_CHECKING:
    import torch

    from features.store import FeatureSet
    from probe.records.results import Result
    from probe.train.data import Batch, Forward
    from probe.train.settings import Settings

__all__ = ["CE_WEIGHTINGS"]


@dataclass(frozen=True)
class Penalty:
    """One penalty term: the hyperparameter that weights it and how it scales.

    ``order`` is its degree in the augmented features x̃ at fixed predictions (the
    gradient variance 1, the Hessian variance 2; terms of the logits alone, 0), so
    the ``unit`` scaling, which measures it on features of unit mean squared norm,
    divides it by m^order with m = mean ‖x̃‖² over the cohort's training rows. ``dC``
    is its power of 1/(d·C) under the CMA authors' linear-probing scaling.
    """

    weight: str
    order: int = 0
    dC: int = 0


@dataclass(frozen=True)
class FeatureScale:
    """What the penalty scalings need to know about a cohort's features."""

    d: int  # feature columns after preprocessing (without the bias)
    C: int  # classes
    m: float = 1.0  # mean ‖x̃‖² over the training rows (bias included)

    def factor(self, penalty: Penalty, normalize: str) -> float:
        if normalize == "unit":
            return self.m ** -penalty.order
        if normalize == "dC":
            return float(self.d * self.C) ** -penalty.dC
        return 1.0

#: hyperparameters several methods share, declared once; a method lists the ones it takes
COMMON: dict[str, Param] = {p.name: p for p in (
    Param("lr", "Learning rate.", default=1e-2, search=("log", 1e-4, 1e-1)),
    Param("weight_decay", "L2 strength λ on the weights (not the bias): the loss gets + λ/2‖W‖². sklearn's "
          "LogisticRegression(C) is the same model at C = 1/(λ·N_train), or 2/(λ·N_train) for two classes.",
          default=1e-4, search=("log", 1e-6, 1e-2)),
    Param("anneal", "Steps with the penalties off; the optimizer state of those heads is reset when they "
          "switch on, and only later checkpoints are kept.", kind=int, default=0),
    # 63 bits: every generator seeded from it (torch's manual_seed, numpy's) takes that
    Param("seed", "Seeds (minibatch order; dfr: its subsampling), whole numbers in [0, 2^63 - 1]. Results are "
          "reported as mean ± std over seeds.", kind=int, default=0, maximum=2**63 - 1),
    # pca by evidence (issue 12, benchmarks/results/defaults.md): over three offline tasks it
    # had the best mean test WGA for ERM and CMA alike, and it is cheaper than the full width.
    Param("preprocess", preprocess_help(), kind=str, default="pca", choices_from=kind_names, chain=True),
)}


class Method:
    """A method's declarations. Subclasses set the class attributes and register."""

    name: ClassVar[str]
    display: ClassVar[str]  # its name in papers and report tables
    summary: ClassVar[str]  # one line for `probe fit --method` help
    params: ClassVar[tuple[Param, ...]] = ()  # its own hyperparameters
    common: ClassVar[tuple[str, ...]] = ("seed",)  # the shared ones (COMMON) it takes
    #: this method's default grids of shared hyperparameters (its published grid of weight decay, say)
    common_grids: ClassVar[dict[str, tuple[Any, ...]]] = {}
    trained_by: ClassVar[str] = "closed form"
    #: settings this method owns: one value per fit (not a grid dimension), given through
    #: ``Settings.options`` and read with ``Param.option`` (None: the declared default)
    options: ClassVar[tuple[Param, ...]] = ()
    #: labels beyond the classes it reads itself (probe.records.regimes.LABELS), besides the
    #: fit's domains (whose source declares its own); a regime that hides them refuses it
    reads: ClassVar[frozenset[str]] = frozenset()
    #: report hint: the two hyperparameters whose grid `probe report --plots` draws as a
    #: validation heatmap (rows, columns); None: no heatmap
    heatmap: ClassVar[tuple[str, str] | None] = None

    @classmethod
    def hyperparameters(cls) -> dict[str, Param]:
        """Every per-configuration hyperparameter, its own first, then the shared ones."""
        shared = {n: replace(COMMON[n], grid=cls.common_grids[n]) if n in cls.common_grids else COMMON[n]
                  for n in cls.common}
        return {**{p.name: p for p in cls.params}, **shared}

    @classmethod
    def configs(cls, grid: dict[str, list[Any]], steps: int, search: str = "grid",
                search_seed: int = 0) -> list[dict[str, Any]]:
        """The configurations to fit: ``grid``'s values for the hyperparameters this method
        takes, its default grid for the others (fractions of ``steps`` resolved); keys it
        does not take are ignored. ``search`` random:N draws N configurations instead
        (DomainBed's protocol: every method the same number of draws), each hyperparameter
        from its declared distribution (``Param.search``), or among the values given for it,
        seeded by ``search_seed`` and the method's name; each draw is fitted at every seed."""
        params = cls.hyperparameters()
        values = {n: list(grid[n]) if grid.get(n) else resolve(p.default_grid, steps) for n, p in params.items()}
        late = [a for a in values.get("anneal", []) if a >= steps]
        if late:  # such a head never meets its penalties: an ERM head reported under this method's name
            raise UserError(f"`anneal` {format_values(late)} is not below `steps` {steps}: {cls.name}'s penalties "
                            "would never switch on; give anneal values below steps")
        if search == "grid":
            return expand(values)
        n = int(search.split(":")[1])
        rng = np.random.default_rng([search_seed, zlib.crc32(cls.name.encode())])
        draws: dict[str, dict[str, Any]] = {}
        for _ in range(n):
            cfg = {k: (grid[k][int(rng.integers(len(grid[k])))] if grid.get(k) else p.sample(rng, steps))
                   for k, p in params.items() if k != "seed"}
            draws.setdefault(json.dumps(cfg, sort_keys=True, default=str), cfg)
        seeds = values.get("seed", [None]) if "seed" in params else [None]
        return [{**cfg, **({"seed": s} if "seed" in params else {})} for cfg in draws.values() for s in seeds]

    @classmethod
    def check_features(cls, fs: FeatureSet, settings: Settings) -> None:
        """Refuse, with a UserError, a feature file (or settings, such as an option that
        cannot apply to it) this method cannot fit, before any method of the run is
        fitted; by default every file will do."""

    @classmethod
    def option(cls, settings: Settings, name: str) -> Any:
        """The value of one of this method's ``options`` in ``settings`` (checked), or its default."""
        return next(p for p in cls.options if p.name == name).option(settings.options)

    @classmethod
    def fit(cls, fs: FeatureSet, configs: list[dict[str, Any]], settings: Settings,
            results: list[Result]) -> None:
        """Fit every configuration (closed-form methods), appending each finished
        :class:`Result` to ``results``; gradient methods are fitted by ``probe.train``."""
        raise NotImplementedError


class GradientMethod(Method):
    """Cross-entropy plus weighted penalties, for a grid of heads at once.

    An instance holds one chunk's per-head hyperparameters ``hp`` (``(G,)`` tensors),
    the fit's settings and the cohort's :class:`FeatureScale`; ``penalty_terms``
    returns ``{term: (G,) tensor}`` for the terms in ``penalties``, unscaled (the
    definitions); the scaling chosen by ``settings.normalize`` is applied here.
    """

    trained_by = "gradient"
    common = ("lr", "weight_decay", "anneal", "seed", "preprocess")
    penalties: ClassVar[dict[str, Penalty]] = {}
    #: default CE weighting (module docstring); None: the method's own base loss
    ce_default: ClassVar[str | None] = "pooled"
    #: uses the Gram matrix X̃X̃ᵀ of the batch (the trainer may supply it precomputed)
    uses_gram: ClassVar[bool] = False
    #: whether penalty_terms keeps state across steps (Fishr's moving averages): then it is
    #: computed for every head at every step, as its authors' code does, penalty on or off
    stateful: ClassVar[bool] = False
    #: default anneal values of a penalised method: penalties on from the start, or after
    #: a share of the steps, so the head first fits the labels (the paper's annealing)
    anneal_grid: ClassVar[tuple[Any, ...]] = (OfSteps(0.0), OfSteps(0.5))
    #: the objective is cross-entropy under a fixed weighting of the domains plus λ/2‖W‖²:
    #: smooth and convex, so the full-batch solver (probe.train.solver) fits it to its
    #: optimum. Such a method has no penalties and no hyperparameters of its own, and its
    #: ``base_loss`` is linear in the per-domain mean CEs (the solver reads the row weights
    #: off it).
    convex: ClassVar[bool] = False

    def __init__(self, hp: dict[str, torch.Tensor], settings: Settings, scale: FeatureScale | None = None) -> None:
        self.hp = hp
        self.settings = settings
        given = settings.ce_weighting
        self.ce = given if given is not None and self.ce_default is not None else self.ce_default
        if scale is None and settings.normalize != "none" and self.penalties:
            raise ValueError(f"normalize={settings.normalize!r} needs the cohort's FeatureScale")
        self.factors = {t: scale.factor(p, settings.normalize) if scale else 1.0 for t, p in self.penalties.items()}
        #: (G,) heads with a non-zero penalty weight (the penalty-free counterparts have none);
        #: None: not known (every head counts)
        self._weighted: torch.Tensor | None = None
        for p in self.penalties.values():
            if p.weight in hp:
                nonzero = hp[p.weight] != 0
                self._weighted = nonzero if self._weighted is None else self._weighted | nonzero

    @classmethod
    def penalized(cls) -> bool:
        return bool(cls.penalties)

    @classmethod
    def hyperparameters(cls) -> dict[str, Param]:
        out = super().hyperparameters()
        if not cls.penalized():
            out.pop("anneal", None)  # nothing to anneal
        elif "anneal" in out:
            out["anneal"] = replace(out["anneal"], grid=cls.anneal_grid)
        return out

    @classmethod
    def memory_per_head(cls, B: int, C: int, D: int, K: int) -> int:
        """Elements one head needs beyond the trainer's own (its penalty's intermediates)."""
        return 0

    def base_loss(self, losses: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss before penalties, ``(G,)``, from the per-domain mean CEs ``losses`` (G, K')."""
        if self.ce == "domain":
            ce = losses.mean(-1)
        else:
            share = batch.domain_share[batch.ids]
            ce = (losses * share).sum(-1) / share.sum()
        return ce, {"ce": ce}

    def penalty_terms(self, fwd: Forward, batch: Batch, gram: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """``{term: (G,)}`` for the terms in ``penalties``; a term whose weight is zero for
        every head of the chunk may be left out (it is then neither added nor logged)."""
        return {}

    def loss(self, fwd: Forward, batch: Batch, penalty_on: torch.Tensor, gram: torch.Tensor | None = None,
             log: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss ``(G,)`` and, with ``log``, what to log; penalties count where
        ``penalty_on`` (G,) is True. Without ``log`` (a step whose terms nobody reads), a
        method whose penalty keeps no state computes it only for the heads it counts for:
        heads still annealing, or whose every weight is 0, cost nothing beyond their
        cross-entropy (half the penalty work of the CMA paper's annealed grids)."""
        total, logs = self.base_loss(fwd.losses, batch)
        if not self.penalties:
            return total, logs
        counted = penalty_on if self._weighted is None else penalty_on & self._weighted
        if log or self.stateful or bool(counted.all()):
            terms = self._scaled(self.penalty_terms(fwd, batch, gram))
            penalty = sum(self.hp[p.weight] * terms[t] for t, p in self.penalties.items() if t in terms)
            logs.update(terms)
            return total + penalty_on.to(total.dtype) * penalty, logs
        idx = counted.nonzero().squeeze(1)
        if idx.numel() == 0:
            return total, logs
        from probe.train.data import Forward as Fwd

        lo, hi = int(idx[0]), int(idx[-1]) + 1
        # the trainer orders a chunk's heads so that those counted form one block (fit_chunks):
        # a slice is a view, where an index copies the heads' logits and scatters them back
        pick: slice | torch.Tensor = slice(lo, hi) if hi - lo == idx.numel() else idx
        sub = Fwd(fwd.z[pick], fwd.p[pick], fwd.residual[pick], fwd.losses[pick])
        terms = self._scaled(self.penalty_terms(sub, batch, gram))
        penalty = sum(self.hp[p.weight][pick] * terms[t] for t, p in self.penalties.items() if t in terms)
        if isinstance(pick, slice):
            from torch.nn.functional import pad

            return total + pad(penalty.to(total.dtype), (lo, len(total) - hi)), logs
        return total.index_add(0, idx, penalty.to(total.dtype)), logs

    @classmethod
    def follows_penalty_free(cls) -> bool:
        """Whether a head, until its penalty switches on, is its penalty-free counterpart:
        no state carried across steps and no hyperparameter but penalty weights, so before
        its anneal step it takes the counterpart's ERM steps exactly (the trainer then
        copies the counterpart instead of computing the head again)."""
        weights = {p.weight for p in cls.penalties.values()}
        return cls.penalized() and not cls.stateful and all(p.name in weights for p in cls.params)

    def heads(self, idx: torch.Tensor) -> GradientMethod:
        """This objective on the heads ``idx`` alone (for a step that computes only some of
        them); a method that carries state across steps cannot be split this way."""
        if self.stateful:
            raise ValueError(f"{self.name} carries state per head; it cannot be fitted on a subset")
        sub = copy.copy(self)
        sub.hp = {k: v[idx] for k, v in self.hp.items()}
        sub._weighted = None if self._weighted is None else self._weighted[idx]
        return sub

    @classmethod
    def penalty_order(cls, configs: list[dict[str, Any]]) -> list[int]:
        """Configurations reordered so that at every step the heads whose penalty counts
        form one block (``loss`` then slices instead of copying): weighted heads first,
        by the step their penalty switches on."""
        weights = {p.weight for p in cls.penalties.values()}
        params = cls.hyperparameters()

        def key(i: int) -> tuple[bool, int]:
            cfg = configs[i]
            unweighted = all(float(cfg.get(w, params[w].default)) == 0 for w in weights)
            return unweighted, int(cfg.get("anneal", 0))

        return sorted(range(len(configs)), key=key)

    def _scaled(self, terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {t: v * self.factors[t] for t, v in terms.items()}


# --------------------------------------------------------------------------- registry

REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: add a method to the registry, checking its declarations."""
    for attr in ("name", "display", "summary"):
        if not isinstance(getattr(cls, attr, None), str):
            raise TypeError(f"{cls.__name__} must declare {attr}")
    if cls.name in REGISTRY:
        raise ValueError(f"method {cls.name!r} is registered twice")
    own = {p.name for p in cls.params}
    clash = {p.name for p in cls.options} & (own | set(COMMON) | {f.name for f in user_settings()})
    if clash:
        raise ValueError(f"{cls.name}: options {sorted(clash)} are also hyperparameters or settings")
    if cls.heatmap is not None and not set(cls.heatmap) <= own | set(COMMON):
        raise ValueError(f"{cls.name}: heatmap {cls.heatmap} names hyperparameters it does not take")
    if own & set(COMMON):
        raise ValueError(f"{cls.name}: {sorted(own & set(COMMON))} are shared hyperparameters; list them in common")
    if issubclass(cls, GradientMethod):
        missing = {p.weight for p in cls.penalties.values()} - own
        if missing:
            raise ValueError(f"{cls.name}: penalties weighted by undeclared hyperparameters {sorted(missing)}")
        if cls.convex and (cls.penalties or cls.params or cls.ce_default is None):
            raise ValueError(f"{cls.name}: a convex method has no penalties, no hyperparameters of its own and "
                             "a cross-entropy weighting (ce_default)")
    for other in REGISTRY.values():  # a name shared by methods must mean one kind of value
        for p in cls.params:
            q = other.hyperparameters().get(p.name)
            if q is not None and (q.kind, q.minimum, q.allowed) != (p.kind, p.minimum, p.allowed):
                raise ValueError(f"{cls.name}.{p.name} disagrees with {other.name}.{p.name} on its type or range")
    REGISTRY[cls.name] = cls
    return cls


def method_names() -> list[str]:
    """Gradient methods by name, then the others (the order of help and messages)."""
    return sorted(REGISTRY, key=lambda n: (REGISTRY[n].trained_by != "gradient", n))


def convex_methods() -> str:
    """The methods the full-batch solver fits (those declaring ``convex``), as a comma list."""
    return ", ".join(n for n in method_names() if getattr(REGISTRY[n], "convex", False))


def get_method(name: str) -> type[Method]:
    if name not in REGISTRY:
        raise UserError(f"`method`: unknown method {name!r}; choose from {', '.join(method_names())}")
    return REGISTRY[name]


def all_params() -> dict[str, list[tuple[type[Method], Param]]]:
    """Hyperparameter name -> the (method, declaration) pairs that take it."""
    out: dict[str, list[tuple[type[Method], Param]]] = {}
    for name in method_names():
        for p in REGISTRY[name].hyperparameters().values():
            out.setdefault(p.name, []).append((REGISTRY[name], p))
    return out
