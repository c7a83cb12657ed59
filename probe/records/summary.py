"""summary.json as typed records (the contract in docs/results-format.md), and the one
aggregation over seeds that every writer and reader uses.

:class:`Summary` holds the run: provenance, completeness, names, and one
:class:`MethodSummary` per method (its selected configuration, its metrics averaged over
seeds, their spread, its head file, its counts). ``probe.runs`` builds them and writes
``to_json()``; ``probe.reports`` reads them with ``from_json`` and never walks the JSON
itself. Keys a later version adds are kept (``extra``) so a reader passes them on.

Over seeds, :class:`Stat` is the one rule: the mean of the values, the sample standard
deviation (ddof 1) and the standard error of the mean (std / √n). A single seed has no
spread: its std and SEM are None (written null), never 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from probe.records.metrics import METRIC_KEYS

#: the format of summary.json; 2 added it (and null, not 0, as one seed's std)
SCHEMA = "probe-run/2"
EVAL_SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Stat:
    """Mean, sample standard deviation and standard error over seeds of one number."""

    mean: float | None
    std: float | None = None
    n: int = 0

    @classmethod
    def of(cls, values: Iterable[Any]) -> Stat:
        """The numbers among ``values`` (None and non-numbers skipped): mean, std (ddof 1)
        and n; std None for fewer than two."""
        nums = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)
                and math.isfinite(float(v))]
        if not nums:
            return cls(None, None, 0)
        mean = sum(nums) / len(nums)
        std = math.sqrt(sum((v - mean) ** 2 for v in nums) / (len(nums) - 1)) if len(nums) > 1 else None
        return cls(mean, std, len(nums))

    @property
    def sem(self) -> float | None:
        """Standard error of the mean (None for fewer than two values)."""
        return self.std / math.sqrt(self.n) if self.std is not None and self.n > 1 else None

    def to_json(self) -> dict[str, float | None]:
        return {"mean": self.mean, "std": self.std}

    @classmethod
    def from_json(cls, obj: Any, n: int = 0) -> Stat:
        if not isinstance(obj, dict):
            return cls(None)
        mean, std = obj.get("mean"), obj.get("std")
        num = (int, float)
        return cls(float(mean) if isinstance(mean, num) else None, float(std) if isinstance(std, num) else None, n)


def seed_stats(runs: Sequence[dict[str, Any] | None]) -> dict[str, Stat]:
    """Each metric's :class:`Stat` over one split's metric dictionaries, one per seed
    (``None``, a split with no rows, is skipped)."""
    present = [r for r in runs if r is not None]
    return {key: Stat.of(r.get(key) for r in present) for key in METRIC_KEYS}


def per_group_stats(runs: Sequence[dict[str, Any] | None]) -> dict[str, dict[str, Any]]:
    """Per group, its accuracy's :class:`Stat` over seeds and its row count:
    ``{group: {"stat": Stat, "n": int}}`` in the first run's group order."""
    values: dict[str, list[Any]] = {}
    sizes: dict[str, Any] = {}
    for r in runs:
        for name, g in ((r or {}).get("per_group") or {}).items():
            values.setdefault(name, []).append(g.get("acc"))
            sizes.setdefault(name, g.get("n"))
    return {name: {"stat": Stat.of(v), "n": sizes[name]} for name, v in values.items()}


def mean_metrics(runs: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
    """One split's metric dictionary averaged over seeds (the same keys as one run's);
    ``None`` when every run's split is ``None`` (a split with no rows)."""
    present = [r for r in runs if r is not None]
    if not present:
        return None
    out: dict[str, Any] = {key: s.mean for key, s in seed_stats(present).items()}
    out["per_group"] = {name: {"acc": d["stat"].mean, "n": d["n"]} for name, d in per_group_stats(present).items()}
    return out


@dataclass
class SplitSeeds:
    """One split's metrics over the selected configuration's seeds."""

    n_seeds: int
    stats: dict[str, Stat]

    @classmethod
    def of(cls, runs: Sequence[dict[str, Any] | None]) -> SplitSeeds:
        return cls(len(runs), seed_stats(runs))

    def get(self, key: str) -> Stat:
        return self.stats.get(key, Stat(None))

    def to_json(self) -> dict[str, Any]:
        return {"n_seeds": self.n_seeds, **{k: s.to_json() for k, s in self.stats.items()}}

    @classmethod
    def from_json(cls, obj: Any) -> SplitSeeds | None:
        if not isinstance(obj, dict):
            return None
        n = obj.get("n_seeds") if isinstance(obj.get("n_seeds"), int) else 0
        return cls(n, {k: Stat.from_json(obj.get(k), n) for k in METRIC_KEYS})


@dataclass
class Selected:
    hparams: dict[str, Any]  # without the seed
    run_ids: list[str]

    def to_json(self) -> dict[str, Any]:
        return {"hparams": self.hparams, "run_ids": self.run_ids}


_COUNTS = ("n_configs", "n_diverged", "n_collapsed", "n_not_converged")


@dataclass
class MethodSummary:
    """One method of a run: what selection chose and what it scored."""

    selected: Selected | None
    metrics: dict[str, dict[str, Any] | None] = field(default_factory=dict)  # split -> mean metric dict
    seeds: dict[str, SplitSeeds] = field(default_factory=dict)  # split -> spread over seeds
    head: str | None = None  # heads/<method>.safetensors
    counts: dict[str, int | None] = field(default_factory=dict)  # _COUNTS; None: not recorded
    #: rule -> {"hparams", "test": {"wga", "acc"}, "ties", "steps"} (probe.runs.selection.by_rule), or None
    by_rule: dict[str, Any] = field(default_factory=dict)
    #: {"configs", "checkpoints", "candidates"}: what the selection chose among (probe.runs.checks)
    budget: dict[str, int] | None = None
    #: [{"code", "message"}] (probe.runs.checks)
    diagnostics: list[dict[str, str]] | None = None
    #: {"method", "diff", "ci95", "diff_acc", "ci95_acc"}: the paired difference to the reference
    vs_reference: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # keys of later versions, kept as read

    @property
    def ci95(self) -> dict[str, Any]:
        """The test figures' 95% intervals ({"wga": [lo, hi], "acc": [lo, hi]}; empty when none)."""
        test = self.metrics.get("test") or {}
        return test.get("ci95") if isinstance(test.get("ci95"), dict) else {}

    def count(self, name: str) -> int | None:
        return self.counts.get(name)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"selected": self.selected.to_json() if self.selected else None,
                               "metrics": self.metrics if self.selected else None,
                               "seeds": {s: v.to_json() for s, v in self.seeds.items()} if self.selected else None,
                               "head": self.head}
        out.update({k: v for k, v in self.counts.items() if v is not None})
        for key in ("by_rule", "budget", "diagnostics", "vs_reference"):
            value = getattr(self, key)
            if value is not None and value != {}:
                out[key] = value
        return {**self.extra, **out}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> MethodSummary:
        """An entry of summary.json's ``methods`` (checked by the caller to be an object)."""
        sel = obj.get("selected")
        selected = None
        if isinstance(sel, dict):
            hp = sel.get("hparams") if isinstance(sel.get("hparams"), dict) else {}
            selected = Selected({k: v for k, v in hp.items() if k != "seed"},
                                [str(r) for r in sel.get("run_ids") or []])
        metrics = obj.get("metrics") if isinstance(obj.get("metrics"), dict) else {}
        seeds_obj = obj.get("seeds") if isinstance(obj.get("seeds"), dict) else {}
        seeds = {s: v for s in EVAL_SPLITS if (v := SplitSeeds.from_json(seeds_obj.get(s))) is not None}
        counts = {k: int(obj[k]) if isinstance(obj.get(k), (int, float)) else None for k in _COUNTS}
        known = {"selected", "metrics", "seeds", "head", "by_rule", "budget", "diagnostics", "vs_reference",
                 *_COUNTS}
        diagnostics = obj.get("diagnostics")
        return cls(selected, {s: m for s, m in metrics.items() if m is None or isinstance(m, dict)}, seeds,
                   obj.get("head") if isinstance(obj.get("head"), str) else None, counts,
                   obj.get("by_rule") if isinstance(obj.get("by_rule"), dict) else {},
                   obj.get("budget") if isinstance(obj.get("budget"), dict) else None,
                   [d for d in diagnostics if isinstance(d, dict)] if isinstance(diagnostics, list) else None,
                   obj.get("vs_reference") if isinstance(obj.get("vs_reference"), dict) else None,
                   {k: v for k, v in obj.items() if k not in known})


@dataclass
class Summary:
    """A run's summary.json."""

    provenance: dict[str, Any]
    complete: bool
    group_names: list[str]
    class_names: list[str]
    methods: dict[str, MethodSummary]
    group_labels: str = "all"  # the information regime (probe.records.regimes)
    #: where the fit's domains came from: {"source", "names", "inferred", "ari_train", "file"}
    domains: dict[str, Any] | None = None
    schema: str = SCHEMA
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def selection(self) -> str:
        """The rule that selected the configurations (``val_wga`` when not recorded)."""
        return str(self.provenance.get("selection") or "val_wga")

    @property
    def fingerprint(self) -> str | None:
        return self.provenance.get("fingerprint")

    @property
    def features(self) -> dict[str, Any]:
        feats = self.provenance.get("features")
        return feats if isinstance(feats, dict) else {}

    def to_json(self) -> dict[str, Any]:
        return {**self.extra, "schema": self.schema, "provenance": self.provenance, "complete": self.complete,
                "group_labels": self.group_labels, "domains": self.domains,
                "group_names": self.group_names, "class_names": self.class_names,
                "methods": {m: s.to_json() for m, s in self.methods.items()}}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Summary:
        """A parsed summary.json whose ``methods`` maps names to objects (the caller checks
        that, naming the file); anything else missing takes its neutral value."""
        prov = obj.get("provenance") if isinstance(obj.get("provenance"), dict) else {}
        known = {"schema", "provenance", "complete", "group_names", "class_names", "methods", "group_labels",
                 "domains"}
        return cls(prov, obj.get("complete") is not False, [str(g) for g in obj.get("group_names") or []],
                   [str(c) for c in obj.get("class_names") or []],
                   {m: MethodSummary.from_json(e) for m, e in obj["methods"].items()},
                   str(obj.get("group_labels") or "all"),
                   obj.get("domains") if isinstance(obj.get("domains"), dict) else None,
                   str(obj.get("schema") or "probe-run/1"), {k: v for k, v in obj.items() if k not in known})
