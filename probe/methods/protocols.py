"""Named protocols: one word for every choice of a published comparison (``--protocol``).

A protocol fixes the methods, their grids, the seeds and the settings for each dataset
it knows; ``resolve`` turns it into the arguments of one ``fit_grid`` call for a feature
file. Anything the user sets explicitly overrides it, and the run records both.

``cma-paper``: the linear-probing comparison of the CMA paper (arXiv 2506.07378), as its
authors' public code (``ISR/real_datasets/``) runs it: PCA to 100 dimensions fitted on
train by scikit-learn's ``PCA(n_components=100)``, their call (randomized at Waterbirds
size), with each seed as its random state (their script seeds numpy's global generator
with the run's seed right before it), then ISR-Mean removing one spurious direction of a
reference class, in their coordinates (``isr_form`` rotate: the rows rotated into the
spurious direction and its QR completion, the spurious coordinate zeroed); a bias-free
head ``nn.Linear(d, C, bias=False)`` from its default initialisation, plain SGD (lr 1e-3,
no momentum, no weight decay), shuffled batches of 500, the mean over environments (the
spurious attribute) of each environment's mean CE, penalties off until the anneal step;
the final step's head; gradient and Hessian divided by d·C for CMA (the other methods'
code divides nothing); five seeds; the configuration with the best mean validation
worst-group accuracy, ties to the smaller standard error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from base.errors import UserError
from features.schema import SPLITS

_GRID_8 = [0.1, 1.0, 10.0, 100.0, 1000.0, 2000.0, 5000.0, 10000.0]


@dataclass(frozen=True)
class DatasetChoices:
    """What a protocol sets per dataset."""

    epochs: int
    anneal: tuple[int, ...]  # the anneal grid, in steps
    isr_class: int


@dataclass(frozen=True)
class Protocol:
    name: str
    summary: str
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    settings: dict[str, Any]
    grids: dict[str, dict[str, list[Any]]]  # per method; "anneal" comes from the dataset
    datasets: dict[str, DatasetChoices]
    method_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    annealed: tuple[str, ...] = ()  # methods whose grid takes the dataset's anneal list
    aliases: dict[str, str] = field(default_factory=dict)  # dataset -> the dataset whose choices it takes


@dataclass
class Resolved:
    """A protocol made concrete for one feature file."""

    protocol: str
    dataset: str  # the dataset whose choices were taken
    methods: list[str]
    settings: dict[str, Any]
    grids: dict[str, dict[str, list[Any]]]
    method_settings: dict[str, dict[str, Any]]
    file_dataset: str = ""  # the feature file's own dataset (differs when the choices were named)

    def restrict(self, methods: list[str]) -> Resolved:
        """The protocol for the methods a fit runs (the user may choose fewer, or others)."""
        return replace(self, methods=[m for m in self.methods if m in methods],
                       grids={m: g for m, g in self.grids.items() if m in methods},
                       method_settings={m: s for m, s in self.method_settings.items() if m in methods})

    def describe(self, settings: dict[str, Any], sizes: dict[str, int], overrides: list[str] | None = None) -> str:
        """One line for the start of a run, of what the fit will do: the effective ``settings``
        (the protocol's with the user's overrides) and each method's configurations × seeds
        (``sizes``); ``overrides``: what the user set explicitly."""
        st = settings
        isr = f" (class {st['isr_class']})" if st.get("isr_class") is not None else ""
        named = f" ({self.dataset}'s choices)" if self.file_dataset != self.dataset else ""
        return (f"protocol {self.protocol} for {self.file_dataset or self.dataset}{named}: {st['steps']} steps of "
                f"{st['batch_size']} ({st['batches']}), {st['optimizer']} (momentum {st['momentum']}), bias "
                f"{st['bias']}, init {st['init']}, domains {st['domain']}, evaluated every {st['eval_every']}, "
                f"pca solver {st.get('pca_solver') or 'exact'}, isr-mean{isr} {st.get('isr_form') or 'project'}; "
                "configurations × seeds: "
                + ", ".join(f"{m} {n}" for m, n in sizes.items())
                + (f"; overridden: {', '.join(sorted(overrides))}" if overrides else ""))

    def record(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """What summary.json keeps: the protocol, its resolved choices, what the user changed."""
        return {"name": self.protocol, "dataset": self.dataset, "file_dataset": self.file_dataset,
                "methods": self.methods, "settings": self.settings, "grids": self.grids,
                "method_settings": self.method_settings, "overrides": overrides}


PROTOCOLS: dict[str, Protocol] = {}


def register(protocol: Protocol) -> Protocol:
    PROTOCOLS[protocol.name] = protocol
    return protocol


def _anneal(stop: int) -> tuple[int, ...]:
    return tuple(int(v) for v in np.linspace(0, stop, 5))


register(Protocol(
    name="cma-paper",
    summary="the CMA paper's linear-probing comparison (ERM, Fishr, CORAL, HGP, CMA; its grids, 5 seeds)",
    methods=("erm", "fishr", "coral", "hgp", "cma"),
    seeds=(0, 1, 2, 3, 4),
    # solver adam: every row, ERM's too, trained by the authors' SGD loop (not solved to its optimum)
    settings={"solver": "adam", "optimizer": "sgd", "momentum": 0.0, "batch_size": 500, "batches": "shuffled", "bias": False,
              "init": "torch-linear", "domain": "a", "ce_weighting": "domain", "normalize": "none",
              "select": "val_wga", "select_checkpoint": "last", "ties": "sem", "pca_dim": 100, "isr_dims": 1,
              # their PCA and ISR coordinates: the head's nn.Linear start is theirs only in these
              "pca_solver": "sklearn", "isr_form": "rotate"},
    grids={
        "erm": {},
        "cma": {"alpha": _GRID_8, "beta": _GRID_8},
        "fishr": {"lam": [10.0, 1e2, 1e3, 1e4], "ema": [0.9, 0.9225, 0.945, 0.9675, 0.99]},
        "hgp": {"alpha": [0.1, 1.0, 10.0, 100.0, 1000.0], "beta": [float(10.0**k) for k in range(-3, 6)]},
        "coral": {"gamma": [float(f"{v:.12g}") for v in np.logspace(-1, 1, 50)], "anneal": [0]},
    },
    method_settings={"cma": {"normalize": "dC"}},
    annealed=("cma", "fishr", "hgp"),
    datasets={
        "waterbirds": DatasetChoices(epochs=300, anneal=_anneal(2800), isr_class=0),
        "celeba": DatasetChoices(epochs=50, anneal=_anneal(16000), isr_class=0),
        "multinli": DatasetChoices(epochs=3, anneal=_anneal(1200), isr_class=2),
    },
    aliases={"demo": "waterbirds"},  # the bundled Waterbirds-style task
))


def protocol_names() -> list[str]:
    return sorted(PROTOCOLS)


def parse_name(name: str) -> tuple[Protocol, str]:
    """``PROTOCOL`` or ``PROTOCOL:DATASET`` as (the protocol, the dataset named or "");
    what can be checked before a feature file is read."""
    proto, _, named = name.partition(":")
    if proto not in PROTOCOLS:
        raise UserError(f"`protocol` {name!r} is unknown; choose from {', '.join(protocol_names())} (or "
                        "PROTOCOL:DATASET for a dataset's choices)")
    p = PROTOCOLS[proto]
    if named and p.aliases.get(named, named) not in p.datasets:
        raise UserError(f"`protocol` {name}: {proto} has choices for {', '.join([*p.datasets, *p.aliases])}, "
                        f"not {named!r}")
    return p, named


def resolve(name: str, dataset: str, n_train: int, num_classes: int, given: dict[str, Any] | None = None) -> Resolved:
    """The protocol ``name`` for a feature file of ``dataset`` with ``n_train`` training rows.

    ``name`` may name the dataset whose choices to take, for a file of any dataset
    (``cma-paper:waterbirds``). ``given``: the settings the user sets explicitly; the
    protocol's values that derive from them (the steps from the epochs and the batch size,
    the evaluation interval from the steps, the anneal grid below the steps) are derived
    from the effective values.
    """
    p, named = parse_name(name)
    proto, known = p.name, ", ".join([*p.datasets, *p.aliases])
    key = p.aliases.get(named or dataset, named or dataset)
    if key not in p.datasets:
        raise UserError(f"`protocol` {proto} has choices for {known}; this feature file is from dataset "
                        f"{dataset!r}, so name the choices to take ({proto}:waterbirds) or set the fit's flags "
                        "yourself")
    ds = p.datasets[key]
    if ds.isr_class >= num_classes:
        raise UserError(f"`protocol` {name} removes the spurious direction of class {ds.isr_class}, but the file "
                        f"has {num_classes} classes")
    given = given or {}
    batch = given.get("batch_size", p.settings["batch_size"])
    per_epoch = 1 if batch <= 0 else math.ceil(n_train / batch)  # batch 0: full batch
    settings = {**p.settings, "isr_class": ds.isr_class, "steps": ds.epochs * per_epoch}
    steps = given.get("steps", settings["steps"])
    settings["eval_every"] = max(1, steps // 20)
    grids = {}
    for m in p.methods:
        grid = {"seed": list(p.seeds), "preprocess": ["pca+isr-mean"], "lr": [1e-3], "weight_decay": [0.0],
                **p.grids.get(m, {})}
        if m in p.annealed:  # the authors' anneal steps that fall within the fit
            grid["anneal"] = [a for a in ds.anneal if a < steps]
        grids[m] = grid
    return Resolved(proto, named or dataset, list(p.methods), settings, grids, dict(p.method_settings),
                    file_dataset=dataset)


def resolve_for(name: str, fs: Any, given: dict[str, Any] | None = None) -> Resolved:
    """``resolve`` for a FeatureSet."""
    return resolve(name, str(fs.attrs.get("dataset", "")) if hasattr(fs, "attrs") else "",
                   int((fs.split == SPLITS["train"]).sum()), fs.num_classes, given)
