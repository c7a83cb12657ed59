"""Everything about a fit that is not a per-head hyperparameter, declared once.

Each field carries its help and allowed values (``setting``); `probe fit` builds
its flags from these declarations and ``LinearHead`` its parameters, and the
checks below name the parameter, so every caller gets the same messages.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from typing import Any

from base.errors import UserError
from base.lazy import lazy_import
from probe.records.regimes import REGIMES
from probe.records.rules import RULES, headline_rules

torch = lazy_import("torch")

OPTIMIZERS = ("adam", "sgd")
#: the head's starting point: zeros, or drawn as torch.nn.Linear draws it (from the seed)
INITS = ("zeros", "torch-linear")
#: domain-balanced batches (about B/K rows of each domain), or uniformly shuffled epochs
BATCHES = ("balanced", "shuffled")
#: the head a configuration keeps: its best validation checkpoint, or the final step's
CHECKPOINTS = ("best", "last")
#: ties in model selection: the higher mean validation accuracy (then the earlier configuration),
#: the earlier configuration, or the smaller standard error over seeds
TIES = ("acc", "first", "sem")
#: how gradient methods are fitted: auto picks lbfgs for the convex ones, adam for the rest
SOLVERS = ("auto", "lbfgs", "adam")
#: penalty scalings (probe.methods.base.FeatureScale): the definitions, the CMA authors'
#: linear-probing division by d·C, or features of unit mean squared norm
NORMALIZATIONS = ("none", "dC", "unit")
DTYPES = ("float32", "float64")
#: cross-entropy weightings (probe.methods.base): the natural-distribution mean, or the
#: mean of per-domain means
CE_WEIGHTINGS = ("pooled", "domain")


def setting(default: Any, help: str, *, choices: tuple[Any, ...] = (), minimum: int | None = None,
            below: float | None = None, positive: bool = False) -> Any:
    """A Settings field with its help and allowed values (read by the CLI and the checks):
    ``choices``, a ``minimum`` and an exclusive upper bound ``below``, or ``positive`` (> 0).
    A number is always finite."""
    return field(default=default, metadata={"help": help, "choices": choices, "minimum": minimum, "below": below,
                                            "positive": positive, "optional": default is None,
                                            "default": default})


@dataclass
class Settings:
    """The fit's settings (fields with help are user-facing; the rest are internal).

    Help texts may name lists that registries own, as ``{convex_methods}``; whoever shows
    them fills those in (``probe.methods.fill_help``), so this module reads no registry.
    Settings that belong to one method or one preprocessing kind (``hessian_method``,
    ``probes``, ``pca_dim``, ...) are declared by their owner and given in ``options``;
    the owner reads and checks them (``Param.option``).
    """

    solver: str = setting("auto", "How heads are fitted: lbfgs (full-batch L-BFGS to the optimum, for the convex "
                                  "penalty-free methods ({convex_methods}); ignores steps, batch_size, optimizer, lr, "
                                  "eval_every, patience and, since the optimum is unique, seed), adam (the "
                                  "stochastic trainer below, every gradient method) or auto (lbfgs where it "
                                  "applies, and for heads with a bias; adam otherwise).", choices=SOLVERS)
    tol: float = setting(1e-5, "lbfgs: a head has converged when every entry of the gradient of its objective "
                               "(mean cross-entropy + λ/2‖W‖²) is at most this in absolute value, as "
                               "scikit-learn's tol for lbfgs; heads that do not get there are marked "
                               "not_converged.", positive=True)
    max_iter: int = setting(1000, "lbfgs: iterations at most per head.", minimum=1)
    steps: int = setting(1000, "Optimisation steps per configuration (one value).", minimum=1)
    batch_size: int = setting(512, "Rows per domain-balanced minibatch, about B/K rows of each of the K domains "
                                   "(one value); 0 or ≥ the train rows: full batch.", minimum=0)
    optimizer: str = setting("adam", "adam, or sgd (with momentum).", choices=OPTIMIZERS)
    # below 1: at 1 or more the velocity never decays and the steps grow without bound
    momentum: float = setting(0.9, "sgd's momentum, in [0, 1) (0: plain SGD, which keeps no state).", minimum=0,
                              below=1)
    bias: bool = setting(True, "Fit a bias per class (the last column of each head); without it the head is "
                               "nn.Linear(d, C, bias=False), as in the CMA authors' linear probes.")
    init: str = setting("zeros", "The head's start: zeros, or torch-linear (drawn as torch.nn.Linear does, from "
                                 "the configuration's seed).", choices=INITS)
    batches: str = setting("balanced", "Minibatches: balanced (about B/K rows of each of the K domains) or "
                                       "shuffled (uniformly shuffled epochs, the last batch of each shorter).",
                           choices=BATCHES)
    eval_every: int = setting(50, "Evaluate on validation every N steps; each head keeps its best checkpoint "
                                  "by the select score.", minimum=1)
    patience: int = setting(0, "Stop a head after N evaluations without improvement (0: never).", minimum=0)
    domain: str | None = setting(None, "Where the domains of the balanced batches and the penalties come from: "
                                          "{domain_sources}. Default: group, or infer:errors when "
                                          "`group_labels` hides the training rows' groups.")
    group_labels: str = setting("all", "Which group labels the fit may read: all, val (validation's only, DFR's "
                                       "setting) or none (none but to report test metrics). Methods, domain "
                                       "sources, preprocessings and selection rules that need more are refused.",
                                choices=tuple(REGIMES))
    select: str | None = setting(None, "The headline rule for checkpoints and model selection (mean over seeds): "
                                       + "; ".join(f"{n} ({RULES[n].help})" for n in headline_rules())
                                       + ". Default: val_wga, or val_worst_class when `group_labels` hides the "
                                         "validation groups. Every rule's choice is recorded beside it.",
                                 choices=headline_rules())
    select_checkpoint: str = setting("best", "The head each configuration keeps: best (its best validation "
                                             "checkpoint) or last (the final step's).", choices=CHECKPOINTS)
    # worst-group accuracy on a small validation group takes few values, so ties are common
    # (14 of CMA's 18 default configurations on the photo task); the grid's order says
    # nothing about them, their validation accuracy does
    ties: str = setting("acc", "Configurations with the same mean validation score: acc (the higher mean "
                               "validation accuracy, then the earlier), first (the earlier) or sem (the smaller "
                               "standard error of the mean over seeds).", choices=TIES)
    search: str = setting("grid", "How each method's configurations are chosen: grid (the product of its grids) or "
                                  "random:N (N draws from the distributions each method declares, or among the "
                                  "values given: DomainBed's protocol, every method the same budget; each draw is "
                                  "fitted at every seed).")
    search_seed: int = setting(0, "The seed of random:N's draws (with the method's name).", minimum=0)
    reference: str | None = setting(None, "The method every other method's test figures are compared with, "
                                          "by a paired bootstrap on the same resampled test rows. Default: erm "
                                          "when the run fits it.")
    normalize: str = setting("none", "Penalty scaling: none (the definitions), unit (each penalty measured on "
                                     "features of unit mean squared norm, so its weight means the same for any "
                                     "encoder) or dC (the CMA authors' linear-probing division by d·C).",
                             choices=NORMALIZATIONS)
    bounds: bool = setting(True, "Measure each kept head's transfer-bound terms (and, along training, their "
                                 "curve); LinearHead skips them unless asked, as it returns none.")
    # 2048: on Waterbirds-size features a stratified sample of 2,048 rows is within 1-3% of
    # every row's figures at a quarter of the cost (benchmarks/results/bounds_sample.md), and
    # at O(rows² d) a larger cap cost more than the ERM solver itself (issue 16)
    bounds_rows: int = setting(2048, "Training rows on which each kept head's bound terms are measured (per-domain "
                                     "losses, max pairwise distance of the domains' gradients, Hessians and third "
                                     "derivatives; exact, O(rows² d)); 0: every training row. A larger train "
                                     "split is sampled once, stratified by domain, the same rows for every fit.",
                               minimum=0)
    bounds_curve_rows: int = setting(1024, "Training rows (the same kind of fixed sample) on which the three "
                                           "distances are measured at every evaluation, for the curves of "
                                           "`probe report --plots`; 0: no curve.", minimum=0)
    ce_weighting: str | None = setting(
        None, "Cross-entropy weighting over the balanced batches: pooled (natural-distribution mean via importance "
              "weights; default of {ce_pooled}) or domain (mean of per-domain means; default of {ce_domain}). "
              "{ce_own} always use their own weights. Default: each method's.", choices=CE_WEIGHTINGS)
    #: settings owned by a method or a preprocessing kind (their declarations say what each
    #: means and allows); a name not given takes its owner's default
    options: dict[str, Any] = field(default_factory=dict)
    device: Any = field(default_factory=lambda: torch.device("cpu"))  # a torch.device
    dtype: Any = field(default_factory=lambda: torch.float32)  # a torch.dtype
    max_heads: int | None = None  # cap on heads per chunk (None: from the memory estimate)
    memory_bytes: int | None = None  # memory a chunk may use (None: a share of what is free)

    def __post_init__(self) -> None:
        if self.normalize is None:  # the Python spelling of "none"
            self.normalize = "none"
        if self.domain is None:  # the regime's default source
            self.domain = "group" if "train_groups" in REGIMES.get(self.group_labels, ()) else "infer:errors"
        if self.select is None:  # the regime's default rule
            self.select = "val_wga" if "val_groups" in REGIMES.get(self.group_labels, ()) else "val_worst_class"
        for f in fields(self):
            if "help" in f.metadata:
                check_setting(f.name, getattr(self, f.name), f.metadata)
        if self.search != "grid" and not re.fullmatch(r"random:[1-9][0-9]*", str(self.search)):
            raise UserError(f"`search` {self.search!r} is not allowed; give grid or random:N (N a whole number >= 1)")
        if self.max_heads is not None and self.max_heads < 1:
            raise UserError(f"`max_heads` {self.max_heads!r} is not allowed; give at least 1")

    @property
    def moment_scaling(self) -> str | None:
        """``normalize`` as probe.moments spells it."""
        return None if self.normalize == "none" else self.normalize

    def public(self) -> dict[str, Any]:
        """The settings as plain JSON values (for provenance), the options given among them."""
        out = {k: (str(v).replace("torch.", "") if isinstance(v, (torch.device, torch.dtype)) else v)
               for k, v in self.__dict__.items() if k != "options"}
        return {**out, **self.options}


def check_dtype(dtype: str) -> None:
    """The fit's dtype, by name (the heads' and the moments' precision)."""
    if dtype not in DTYPES:
        raise UserError(f"`dtype` {dtype!r} is not one of: {', '.join(DTYPES)}")


def check_setting(name: str, value: Any, meta: Any) -> None:
    choices, minimum = meta.get("choices") or (), meta.get("minimum")
    if value is None and meta.get("optional"):  # None means "the default", described in the help
        return
    if choices and value not in choices:
        raise UserError(f"`{name}` {value!r} is not one of: {', '.join(map(str, choices))}")
    if isinstance(meta.get("default"), bool):
        if not isinstance(value, bool):
            raise UserError(f"`{name}`: {value!r} is not true or false")
        return
    if isinstance(value, bool) and (meta.get("positive") or minimum is not None):
        raise UserError(f"`{name}`: {value!r} is not allowed; give a number")
    # NaN passes every comparison and infinity most; either would reach the results unseen
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"`{name}`: {value!r} is not allowed; give a finite number")
    if meta.get("positive") and (not isinstance(value, (int, float)) or value <= 0):
        raise UserError(f"`{name}`: {value!r} is not allowed; give a number > 0")
    if minimum is None:
        return
    whole = isinstance(meta.get("default"), int) or meta.get("optional")
    below = meta.get("below")
    if (not isinstance(value, (int, float)) or (whole and not isinstance(value, int)) or value < minimum
            or (below is not None and value >= below)):
        upper = f" and < {below:g}" if below is not None else ""
        raise UserError(f"`{name}`: {value!r} is not allowed; give a {'whole ' if whole else ''}number >= {minimum}"
                        f"{upper}")



def user_settings() -> list[Any]:
    """The fields a user sets (those declared with help), in declaration order."""
    return [f for f in fields(Settings) if "help" in f.metadata]


def setting_kind(f: Any) -> type:
    """The type a user setting's value is given as (its flag's type): int, float, bool or str."""
    return {"int": int, "int | None": int, "float": float, "bool": bool}.get(str(f.type), str)
