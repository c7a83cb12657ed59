"""Where a fit's domains come from: one registered class per source, declaring what labels
it reads, resolved once into a :class:`probe.records.fitset.FitSet` before anything is fitted.

A source reads some of the labels a feature file may hold besides the classes
(``LABELS``); a run can then be told what it may read, and a source that needs more is
refused before any work. Every list of sources (`--domain`'s choices and help, the
study file's checks) is read from this registry.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from base.errors import UserError
from probe.records.fitset import FitSet
from probe.records.grid import Param
from probe.records.metrics import group_sizes
from probe.records.regimes import LABELS, REGIMES, check_reads, stricter

if TYPE_CHECKING:
    from features.store import FeatureSet

class DomainSource:
    """A source's declarations. Subclasses set the class attributes, implement
    ``domains`` and register with :func:`register`."""

    name: ClassVar[str]
    help: ClassVar[str]  # one clause for `--domain`'s help
    reads: ClassVar[frozenset[str]] = frozenset()  # keys of LABELS
    #: whether the domains are inferred from the data (then each run saves them, per row)
    inferred: ClassVar[bool] = False
    #: settings this source owns (one value per fit), given through ``Settings.options``
    options: ClassVar[tuple[Param, ...]] = ()

    @classmethod
    def domains(cls, fs: FeatureSet, settings: Any) -> tuple[np.ndarray, list[str]]:
        """Each training row's domain as ``(codes, names)``: codes over the training rows in
        file order, any integers (they are renumbered densely), and a name per code value
        as a dict or list indexed by the value."""
        raise NotImplementedError


REGISTRY: dict[str, type[DomainSource]] = {}


def register(cls: type[DomainSource]) -> type[DomainSource]:
    for attr in ("name", "help"):
        if not isinstance(getattr(cls, attr, None), str):
            raise TypeError(f"{cls.__name__} must declare {attr}")
    if cls.name in REGISTRY:
        raise ValueError(f"domain source {cls.name!r} is registered twice")
    unknown = set(cls.reads) - set(LABELS)
    if unknown:
        raise ValueError(f"{cls.name}: reads unknown labels {sorted(unknown)}")
    REGISTRY[cls.name] = cls
    return cls


def source_names() -> list[str]:
    return list(REGISTRY)


def get_source(name: str) -> type[DomainSource]:
    if name not in REGISTRY:
        raise UserError(f"`domain` {name!r} is not one of: {', '.join(source_names())}")
    return REGISTRY[name]


def restrict(fs: FeatureSet, regime: str) -> FeatureSet:
    """``fs`` as a fit under ``regime`` may read it: the group and attribute labels of the
    rows whose labels it hides are -1 (unknown). The features and the other arrays are
    shared; the test rows keep theirs (they are read to report test metrics only)."""
    hidden = np.zeros(len(fs.y), dtype=bool)
    for label, split in (("train_groups", "train"), ("val_groups", "val")):
        if label not in REGIMES[regime]:
            hidden |= fs.split_mask(split)
    if not hidden.any():
        return fs
    group, a = fs.group.copy(), fs.a.copy()
    group[hidden] = -1
    a[hidden] = -1
    return dataclasses.replace(fs, group=group, a=a)


def resolve(fs: FeatureSet, name: str, settings: Any = None) -> FitSet:
    """``fs`` with the domains of the source ``name`` (read with the fit's ``settings``),
    numbered densely over the training rows in order of their codes (so a code of 10¹²
    costs nothing), named by the source. With ``settings``, the labels its regime hides are
    hidden first (:func:`restrict`), and a source that reads them is refused. The result
    records its regime (the stricter one when ``fs`` is a FitSet already) and the file's
    training rows per group, which only the test metrics' report reads."""
    source = get_source(name)
    regime = getattr(settings, "group_labels", "all")
    if isinstance(fs, FitSet):  # resolved again: what it hid already stays hidden
        regime = stricter(regime, fs.group_labels)
    check_reads(f"`domain` {name}", source.reads, regime)
    counted = getattr(fs, "report_train_groups", None)  # a FitSet's, resolved again
    if counted is None:  # before they are hidden: only the test metrics' report reads them
        counted = group_sizes(fs.group[fs.split_mask("train")], fs.num_groups)
    fs = restrict(fs, regime)
    train = fs.split_mask("train")
    codes, names = source.domains(fs, settings)
    codes = np.asarray(codes, np.int64)
    if codes.shape != (int(train.sum()),):
        raise ValueError(f"domain source {source.name} gave {codes.shape} codes for {int(train.sum())} training rows")
    values, dense = np.unique(codes, return_inverse=True)
    domain = np.full(len(fs.y), -1, np.int64)
    domain[train] = dense
    return FitSet.of(fs, domain, [str(names[int(v)]) for v in values], source.name, group_labels=regime,
                     report_train_groups=counted)


def narrow(fs: FitSet, regime: str) -> FitSet:
    """``fs``, resolved already, as a fit under ``regime`` may read it: its source refused when
    it reads what the regime hides, and the labels the regime hides that ``fs``'s did not,
    hidden now (its domains stay: their source reads nothing this regime hides). A regime
    looser than ``fs``'s uncovers nothing: the result's ``group_labels`` is the stricter one."""
    regime = stricter(regime, fs.group_labels)
    check_reads(f"`domain` {fs.domain_source}", get_source(fs.domain_source).reads, regime)
    if regime == fs.group_labels:
        return fs
    return dataclasses.replace(restrict(fs, regime), group_labels=regime)
