"""Everything about a fit that is not a per-head hyperparameter, declared once.

Each field carries its help and allowed values (``setting``); `probe fit` builds
its flags from these declarations and ``LinearHead`` its parameters, and the
checks below name the parameter, so every caller gets the same messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from base.errors import UserError
from base.lazy import lazy_import
from probe import moments
from probe.methods.base import CE_WEIGHTINGS

torch = lazy_import("torch")

#: columns that can define the penalties' domains (and the balanced batches)
DOMAIN_COLUMNS = ("group", "a", "y")
OPTIMIZERS = ("adam", "sgd")
#: the checkpoint and model-selection scores
SELECT_SCORES = ("val_wga", "val_acc")
#: penalty scalings (probe.methods.base.FeatureScale): the definitions, the CMA authors'
#: linear-probing division by d·C, or features of unit mean squared norm
NORMALIZATIONS = ("none", "dC", "unit")
DTYPES = ("float32", "float64")


def setting(default: Any, help: str, *, choices: tuple[Any, ...] = (), minimum: int | None = None) -> Any:
    """A Settings field with its help and allowed values (read by the CLI and the checks)."""
    return field(default=default, metadata={"help": help, "choices": choices, "minimum": minimum})


@dataclass
class Settings:
    """The fit's settings (fields with help are user-facing; the rest are internal)."""

    steps: int = setting(1000, "Optimisation steps per configuration (one value).", minimum=1)
    batch_size: int = setting(512, "Rows per domain-balanced minibatch, about B/K rows of each of the K domains "
                                   "(one value); 0 or ≥ the train rows: full batch.", minimum=0)
    optimizer: str = setting("adam", "adam, or sgd (momentum 0.9).", choices=OPTIMIZERS)
    eval_every: int = setting(50, "Evaluate on validation every N steps; each head keeps its best checkpoint "
                                  "by the select score.", minimum=1)
    patience: int = setting(0, "Stop a head after N evaluations without improvement (0: never).", minimum=0)
    domain: str = setting("group", "Column defining the domains of the balanced batches and the penalties: "
                                   "group, a (spurious attribute) or y.", choices=DOMAIN_COLUMNS)
    select: str = setting("val_wga", "Checkpoint and model selection: val_wga (validation worst-group accuracy, "
                                     "mean over seeds) or val_acc.", choices=SELECT_SCORES)
    normalize: str = setting("none", "Penalty scaling: none (the definitions), unit (each penalty measured on "
                                     "features of unit mean squared norm, so its weight means the same for any "
                                     "encoder) or dC (the CMA authors' linear-probing division by d·C).",
                             choices=NORMALIZATIONS)
    hessian_method: str = setting("auto", "CMA Hessian-variance form: auto, kernel, binary, direct (all exact).",
                                  choices=moments.METHODS)
    pca_dim: int = setting(64, "Components kept by the pca preprocessing.", minimum=1)
    probes: int = setting(100, "hutchinson: Rademacher probes per step for each domain's Hessian-diagonal "
                               "estimate.", minimum=1)
    bounds_rows: int = setting(8192, "Training rows on which each kept head's bound terms are measured (per-domain "
                                     "losses, max pairwise distance of the domains' gradients, Hessians and third "
                                     "derivatives; exact, O(rows² d)); 0: every training row. A larger train "
                                     "split is sampled once, stratified by domain, the same rows for every fit.",
                               minimum=0)
    bounds_curve_rows: int = setting(1024, "Training rows (the same kind of fixed sample) on which the three "
                                           "distances are measured at every evaluation, for the curves of "
                                           "`probe report --plots`; 0: no curve.", minimum=0)
    ce_weighting: str | None = setting(
        None, "Cross-entropy weighting over the balanced batches: pooled (natural-distribution mean via importance "
              "weights; default of erm, cma, irm, vrex, fishr) or domain (mean of per-domain means; default of "
              "reweight). GroupDRO always uses its own weights. Default: each method's.", choices=CE_WEIGHTINGS)
    device: Any = field(default_factory=lambda: torch.device("cpu"))  # a torch.device
    dtype: Any = field(default_factory=lambda: torch.float32)  # a torch.dtype
    max_heads: int | None = None  # cap on heads per chunk (None: from the memory estimate)
    memory_bytes: int | None = None  # memory a chunk may use (None: a share of what is free)

    def __post_init__(self) -> None:
        if self.normalize is None:  # the Python spelling of "none"
            self.normalize = "none"
        for f in fields(self):
            if "help" in f.metadata:
                check_setting(f.name, getattr(self, f.name), f.metadata)
        if self.max_heads is not None and self.max_heads < 1:
            raise UserError(f"`max_heads` {self.max_heads!r} is not allowed; give at least 1")

    @property
    def moment_scaling(self) -> str | None:
        """``normalize`` as probe.moments spells it."""
        return None if self.normalize == "none" else self.normalize

    def public(self) -> dict[str, Any]:
        """The settings as plain JSON values (for provenance)."""
        return {k: (str(v).replace("torch.", "") if isinstance(v, (torch.device, torch.dtype)) else v)
                for k, v in self.__dict__.items()}


def check_setting(name: str, value: Any, meta: Any) -> None:
    choices, minimum = meta.get("choices") or (), meta.get("minimum")
    if value is None and name == "ce_weighting":
        return
    if choices and value not in choices:
        raise UserError(f"`{name}` {value!r} is not one of: {', '.join(map(str, choices))}")
    if minimum is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
        raise UserError(f"`{name}`: {value!r} is not allowed; give a whole number >= {minimum}")


def user_settings() -> list[Any]:
    """The fields a user sets (those declared with help), in declaration order."""
    return [f for f in fields(Settings) if "help" in f.metadata]
