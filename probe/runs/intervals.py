"""95% intervals on the selected heads' test figures, and on their differences to a reference.

A bootstrap over the test rows, resampled with replacement *within* each group (the
groups' sizes are fixed by the benchmark's design, so only which rows fall in each is
random): ``RESAMPLES`` resamples drawn with the seed ``SEED``, the same resamples for every
method, so that a method's difference to the reference is paired row by row. A method
with several seeds also has its seeds resampled with replacement in every resample, so
that its interval holds the seeds' spread as well as the test set's. Intervals are the
2.5 and 97.5 percentiles. Test labels are read here only to report, as in every regime.

WGA is the worst group's accuracy over the groups with test rows; rows whose group is
unknown (-1) count for the accuracy and form their own stratum, in no group.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from probe.records.fitset import FitSet
from probe.records.results import Result

RESAMPLES = 2000
SEED = 0
#: elements of one (heads, resamples, rows) gather: resamples are drawn in chunks this size
CHUNK_ELEMENTS = 1 << 22


def test_correctness(fs: FitSet, row: Result) -> np.ndarray:
    """(n_test,) bool: which test rows the row's head classifies correctly (its own
    preprocessing state applied to the file's features)."""
    import torch

    from probe.moments.basics import logits
    from probe.preprocessing import Preprocessor

    test = fs.split_mask("test")
    X = torch.as_tensor(fs.features[test], dtype=torch.float64)
    pre = Preprocessor(str(row.hparams.get("preprocess", "none")), {k: v.double() for k, v in (row.pre or {}).items()})
    Z = pre.transform(X)
    theta = row.theta.to(torch.float64)
    bias = theta.shape[-1] == Z.shape[1] + 1
    pred = logits(theta, Z, bias).argmax(-1).numpy()
    return pred == fs.y[test]


def bootstrap(correct: dict[str, np.ndarray], groups: np.ndarray, reference: str | None = None,
              resamples: int = RESAMPLES, seed: int = SEED,
              points: dict[str, dict[str, float | None]] | None = None) -> dict[str, dict[str, Any]]:
    """``correct``: per method, (seeds, n) booleans on the same n test rows, whose groups are
    ``groups`` (n,). Returns per method ``{"ci95": {"wga": [lo, hi], "acc": [lo, hi]}}`` and,
    for every method but the reference, ``"vs_reference": {"method", "diff", "ci95"}`` with
    ``diff`` the point difference of WGA (and ``diff_acc``, ``ci95_acc`` for accuracy).
    ``points``: per method, the ``wga`` and ``acc`` the differences are taken between (the
    figures the run reports, scored when the head was fitted); by default those of
    ``correct``, which a head re-scored in another precision may move by a row."""
    rng = np.random.default_rng(seed)
    names = list(correct)
    stacked = np.concatenate([np.atleast_2d(correct[m]) for m in names]).astype(np.float64)
    owner = np.concatenate([[i] * np.atleast_2d(correct[m]).shape[0] for i, m in enumerate(names)])
    strata = [np.flatnonzero(groups == s) for s in np.unique(groups)]
    real = np.array([groups[s[0]] >= 0 for s in strata])
    hits = np.empty((resamples, len(stacked), len(strata)))
    for j, rows in enumerate(strata):
        chunk = max(1, CHUNK_ELEMENTS // (len(stacked) * len(rows)))
        for b0 in range(0, resamples, chunk):
            bc = min(chunk, resamples - b0)
            idx = rows[rng.integers(0, len(rows), size=(bc, len(rows)))]
            hits[b0: b0 + bc, :, j] = stacked[:, idx].sum(-1).T
    sizes = np.array([len(s) for s in strata], np.float64)
    wga = (hits[:, :, real] / sizes[real]).min(-1) if real.any() else np.full(hits.shape[:2], np.nan)
    acc = hits.sum(-1) / sizes.sum()
    # each method's seeds resampled by a generator of its own: a method's interval does not
    # depend on which other methods the run has, or their order
    draws = {m: _seed_means(np.random.default_rng([seed, zlib.crc32(m.encode())]), wga, acc, owner == i)
             for i, m in enumerate(names)}
    point = {m: {**_point(stacked[owner == i], groups),
                 **{k: float(v) for k, v in ((points or {}).get(m) or {}).items() if isinstance(v, (int, float))}}
             for i, m in enumerate(names)}
    out = {m: {"ci95": {k: _interval(draws[m][k]) for k in ("wga", "acc")}} for m in names}
    if reference in draws:
        for m in names:
            if m == reference:
                continue
            out[m]["vs_reference"] = {
                "method": reference, "diff": point[m]["wga"] - point[reference]["wga"],
                "ci95": _interval(draws[m]["wga"] - draws[reference]["wga"]),
                "diff_acc": point[m]["acc"] - point[reference]["acc"],
                "ci95_acc": _interval(draws[m]["acc"] - draws[reference]["acc"])}
    return out


def _seed_means(rng: np.random.Generator, wga: np.ndarray, acc: np.ndarray, mine: np.ndarray) -> dict[str, np.ndarray]:
    """Per resample, the mean over a resample of the method's seeds (the same seeds for both figures)."""
    cols = np.flatnonzero(mine)
    pick = cols[rng.integers(0, len(cols), size=(len(wga), len(cols)))] if len(cols) > 1 else np.tile(cols, (len(wga), 1))
    return {"wga": np.take_along_axis(wga, pick, 1).mean(1), "acc": np.take_along_axis(acc, pick, 1).mean(1)}


def _point(correct: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    """The figures as the summary has them: per seed, then the mean over seeds."""
    known = [g for g in np.unique(groups) if g >= 0]
    wga = [min(float(c[groups == g].mean()) for g in known) if known else float("nan") for c in correct]
    return {"wga": float(np.mean(wga)), "acc": float(correct.mean())}


def _interval(values: np.ndarray) -> list[float] | None:
    finite = values[np.isfinite(values)]
    return [float(np.percentile(finite, 2.5)), float(np.percentile(finite, 97.5))] if finite.size else None


def selected_intervals(fs: FitSet, chosen: dict[str, Sequence[Result]], reference: str | None,
                       resamples: int = RESAMPLES, points: dict[str, dict[str, float | None]] | None = None
                       ) -> dict[str, dict[str, Any]]:
    """:func:`bootstrap` for the selected rows of each method (each with its head at hand);
    ``points``: the figures the differences are taken between (:func:`bootstrap`)."""
    usable = {m: rows for m, rows in chosen.items() if rows and all(r.theta is not None for r in rows)}
    if not usable or not fs.split_mask("test").any():
        return {}
    correct = {m: np.stack([test_correctness(fs, r) for r in rows]) for m, rows in usable.items()}
    return bootstrap(correct, fs.group[fs.split_mask("test")], reference, resamples, points=points)
