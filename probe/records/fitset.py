"""A feature file as one fit reads it: the file's arrays and the fit's domains.

The domains of a fit (the balanced batches', the penalties' and the bound terms') come
from a domain source (``probe.domains``): a column of the file, or domains inferred from
the training rows. The source is resolved once, before anything is fitted, into a
:class:`FitSet`; everything below (splits, batches, plans, the bound terms, the methods'
own fits) reads ``domain`` and ``domain_names`` from it and never a column by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from features.featureset import FeatureSet


@dataclass
class FitSet(FeatureSet):
    """A FeatureSet with the fit's domains resolved."""

    #: (N,) int64: the domain of every training row, densely numbered 0..K-1 (-1 elsewhere)
    domain: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    domain_names: list[str] = field(default_factory=list)  # K names, in id order
    domain_source: str = ""  # the source's name, as `--domain` spells it
    #: the information regime (``probe.records.regimes``) whose hidden labels are hidden here
    group_labels: str = "all"
    #: (num_groups,) the file's training rows per group, counted before the regime hid any:
    #: they weight the *test* split's ``acc_train_weighted`` (reporting test metrics is
    #: allowed in every regime; ``probe.records.metrics.train_group_totals``) and nothing a
    #: fit reads
    report_train_groups: np.ndarray | None = None

    @classmethod
    def of(cls, fs: FeatureSet, domain: np.ndarray, names: list[str], source: str, **changes: Any) -> FitSet:
        """``fs`` with these domains (sharing its arrays); ``changes`` replace FeatureSet fields
        and the regime's (``group_labels``, ``report_train_groups``)."""
        base = {f.name: getattr(fs, f.name) for f in fields(FeatureSet)}
        regime = {k: changes.pop(k, getattr(fs, k, None)) for k in ("group_labels", "report_train_groups")}
        regime["group_labels"] = regime["group_labels"] or "all"
        return cls(**{**base, **changes}, domain=np.asarray(domain, np.int64), domain_names=list(names),
                   domain_source=source, **regime)

    @property
    def num_domains(self) -> int:
        return len(self.domain_names)

    def train_domains(self) -> np.ndarray:
        """The domain id of every training row, in file order."""
        return self.domain[self.split_mask("train")]
