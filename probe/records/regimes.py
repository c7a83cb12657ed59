"""Information regimes: which labels beyond the classes a fit may read (``--group-labels``).

Everything that reads labels declares it (domain sources, methods, preprocessing kinds,
selection rules: ``reads``, keys of ``LABELS``); a fit under a regime refuses, before any
work, whatever needs more than the regime allows (:func:`check_reads`), and the fit never
receives the labels it may not read (``probe.domains.restrict`` hides them). Test labels
are always read, and only to report test metrics.
"""

from __future__ import annotations

from collections.abc import Iterable

from base.errors import UserError

#: labels beyond the classes that a fit may read
LABELS = {
    "train_groups": "the group and spurious-attribute labels of the training rows",
    "val_groups": "the group and spurious-attribute labels of the validation rows",
}

#: regime -> the labels it allows: all (every group label), val (validation's only, DFR's
#: setting), none (no group label anywhere but to report test metrics)
REGIMES = {
    "all": frozenset(LABELS),
    "val": frozenset({"val_groups"}),
    "none": frozenset(),
}


def stricter(a: str, b: str) -> str:
    """The regime of the two that allows less (they are nested: all, val, none)."""
    return a if REGIMES[a] <= REGIMES[b] else b


def check_reads(what: str, reads: Iterable[str], regime: str) -> None:
    """Refuse ``what`` (e.g. "`method` dfr") when it reads labels the regime hides; one line
    naming both."""
    missing = sorted(set(reads) - REGIMES[regime])
    if missing:
        needs = " and ".join(LABELS[m] for m in missing)
        raise UserError(f"{what} reads {needs}, which `group_labels` {regime} does not allow; choose another or "
                        f"allow more labels")
