"""Group-aware accuracy metrics, computed once here and used by every writer.

All values are fractions in [0, 1]. Keys (see the README's metric table):
    acc                 plain accuracy over the split's samples
    acc_train_weighted  sum_g acc_g * n_g(train) / N(train)  (the Waterbirds "average");
                        groups with no rows in the split, or none in train, are left out
                        and the remaining train weights renormalised
    acc_group_mean      (1/G') sum_g acc_g over the G' groups that have samples
    wga                 min_g acc_g over groups that have samples
    worst_class         min_c acc_c over classes that have samples (the worst per-class
                        accuracy, recall: needs no group labels)
    ce                  mean cross-entropy of the head on the split (when it was scored
                        with its probabilities)
    per_group           group name -> {"acc": float | None, "n": int}
    per_class           class name -> {"acc": float | None, "n": int}

A split with no rows gives ``None`` for every metric (the run folder stores the
whole split as null); a group with no rows in a split has ``"acc": None``. Rows whose
group is hidden from the fit (group -1, ``probe.domains``: the information regime)
count for ``acc``, the classes and ``ce`` but for no group; when every row's group is
hidden, the group metrics are None.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from base.lazy import lazy_import
from features.schema import SPLITS

if TYPE_CHECKING:
    from features.store import FeatureSet

torch = lazy_import("torch")

METRIC_KEYS = ("acc", "acc_train_weighted", "acc_group_mean", "wga", "worst_class", "ce")


def correct_by_group(
    pred: torch.Tensor, y: torch.Tensor, group: torch.Tensor, num_groups: int
) -> torch.Tensor:
    """Count correct predictions per group for H heads at once.

    pred: (H, N) or (N,) class indices; y, group: (N,). Returns (H, num_groups)
    (or (num_groups,)) float64 counts on pred's device. Rows of group -1 (hidden) count
    for no group.
    """
    squeeze = pred.dim() == 1
    pred2 = pred.unsqueeze(0) if squeeze else pred
    y = y.to(pred2.device)
    group = group.to(device=pred2.device, dtype=torch.long)
    hit = (pred2 == y.unsqueeze(0)).to(torch.float64)
    known = group >= 0
    if not bool(known.all()):
        hit, group = hit[:, known], group[known]
    out = torch.zeros(pred2.shape[0], num_groups, dtype=torch.float64, device=pred2.device)
    out.index_add_(1, group, hit)
    return out[0] if squeeze else out


def group_sizes(group: torch.Tensor | np.ndarray, num_groups: int) -> np.ndarray:
    """Rows per group, shape (num_groups,) int64; groups with no rows count 0, and rows of
    group -1 (hidden from the fit) count for none."""
    g = group.detach().cpu().numpy() if isinstance(group, torch.Tensor) else np.asarray(group)
    g = g.astype(np.int64).reshape(-1)
    # Out-of-range indices mean the group names and the group column disagree;
    # dropping them silently would skew every metric.
    if g.size and (g.min() < -1 or g.max() >= num_groups):
        raise ValueError(f"group index out of range [0, {num_groups}): {g.min()}..{g.max()}")
    return np.bincount(g[g >= 0], minlength=num_groups).astype(np.int64)


def worst_group_accuracy(correct: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """Min over groups with samples of correct/total; correct is (..., G), total (G,).

    Returns NaN where no group has samples (an empty split), so callers can test
    ``isnan`` instead of catching an error.
    """
    total = total.to(correct.device)
    present = total > 0
    if not bool(present.any()):
        return torch.full(correct.shape[:-1], float("nan"), dtype=correct.dtype, device=correct.device)
    acc = correct[..., present] / total[present].to(correct.dtype)
    return acc.min(dim=-1).values


def metrics_from_counts(
    correct: Sequence[float] | np.ndarray,
    total: Sequence[int] | np.ndarray,
    train_total: Sequence[int] | np.ndarray,
    group_names: Sequence[str],
    classes: tuple[Any, Any, Sequence[str]] | None = None,
    ce: float | None = None,
) -> dict[str, Any]:
    """The metric dictionary for one head on one split, from per-group counts and, when
    given, per-class counts ``(correct, total, class_names)`` (then ``acc`` counts every
    row, hidden groups included) and the split's mean cross-entropy ``ce``."""
    correct = np.asarray(correct, dtype=np.float64).reshape(-1)
    total = np.asarray(total, dtype=np.int64).reshape(-1)
    train_total = np.asarray(train_total, dtype=np.int64).reshape(-1)
    sizes = {len(correct), len(total), len(train_total), len(group_names)}
    if len(sizes) != 1:
        raise ValueError(
            f"per-group lengths disagree: correct {len(correct)}, total {len(total)}, "
            f"train_total {len(train_total)}, group_names {len(group_names)}"
        )
    acc_g, present = _rates(correct, total)
    out: dict[str, Any] = {
        "acc": float(correct.sum() / total.sum()) if total.sum() else None,
        "acc_train_weighted": _train_weighted(acc_g, train_total),
        "acc_group_mean": float(acc_g[present].mean()) if present.any() else None,
        "wga": float(acc_g[present].min()) if present.any() else None,
        "worst_class": None,
        "ce": ce,
        "per_group": _per_name(acc_g, present, total, group_names),
    }
    if classes is not None:
        c_correct, c_total = (np.asarray(v, dtype=np.float64).reshape(-1) for v in classes[:2])
        acc_c, has = _rates(c_correct, c_total)
        out["acc"] = float(c_correct.sum() / c_total.sum()) if c_total.sum() else None
        out["worst_class"] = float(acc_c[has].min()) if has.any() else None
        out["per_class"] = _per_name(acc_c, has, c_total, classes[2])
    return out


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _rates(correct: np.ndarray, total: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    present = total > 0
    rate = np.full(len(total), np.nan)
    rate[present] = correct[present] / total[present]
    return rate, present


def _per_name(rate: np.ndarray, present: np.ndarray, total: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
    return {str(name): {"acc": (float(rate[i]) if present[i] else None), "n": int(total[i])}
            for i, name in enumerate(names)}


def _train_weighted(acc_g: np.ndarray, train_total: np.ndarray) -> float | None:
    # Groups with no rows in this split cannot be scored; weight the rest by
    # their train sizes (renormalised) rather than silently counting them as 0.
    usable = ~np.isnan(acc_g) & (train_total > 0)
    if not usable.any():
        return None
    w = train_total[usable].astype(np.float64)
    return float((acc_g[usable] * w).sum() / w.sum())


def split_metrics(
    pred: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    group: np.ndarray | torch.Tensor,
    group_names: Sequence[str],
    train_total: Sequence[int] | np.ndarray,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Metrics for one head's predictions (N,) on one split (per class too, with ``class_names``)."""
    pred_t, y_t, g_t = (v if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v)) for v in (pred, y, group))
    num_groups = len(group_names)
    correct = correct_by_group(pred_t.long(), y_t.long(), g_t.long(), num_groups).cpu().numpy()
    classes = None
    if class_names is not None:
        c = len(class_names)
        classes = (correct_by_group(pred_t.long(), y_t.long(), y_t.long(), c).cpu().numpy(),
                   group_sizes(y_t, c), class_names)
    return metrics_from_counts(correct, group_sizes(g_t, num_groups), train_total, group_names, classes)


def train_group_totals(fs: FeatureSet, split: str) -> np.ndarray:
    """The training rows per group that weight ``split``'s ``acc_train_weighted``: for the test
    split the file's own counts, whatever the regime hid from the fit (a test metric is only
    reported, which every regime allows, and the same head reports the same test figures
    under each); for the others, the groups the fit may read (none when they are hidden)."""
    kept = getattr(fs, "report_train_groups", None)  # a FitSet's, when its regime hid them
    if split == "test" and kept is not None:
        return kept
    return group_sizes(fs.group[fs.split == SPLITS["train"]], fs.num_groups)


def metrics_by_head(fs: FeatureSet, predictions: dict[str, torch.Tensor],
                    ce: dict[str, torch.Tensor] | None = None) -> list[dict[str, dict[str, Any]]]:
    """Per head, every split's metric dictionary, from predicted classes ``(G, n_split)``
    per split (rows in file order) and, when given, each head's mean cross-entropy (G,)
    per split: the one scoring path of every method's results."""
    C = fs.num_classes
    per_split = {}
    for name, pred in predictions.items():
        mask = fs.split == SPLITS[name]
        y, g = torch.as_tensor(fs.y[mask]), torch.as_tensor(fs.group[mask])
        correct = correct_by_group(pred, y, g, fs.num_groups).cpu().numpy()
        by_class = correct_by_group(pred, y, y, C).cpu().numpy()
        per_split[name] = (correct, group_sizes(g, fs.num_groups), by_class, group_sizes(y, C))
    heads = next(iter(per_split.values()))[0].shape[0] if per_split else 0
    ces = {name: v.detach().cpu().tolist() for name, v in (ce or {}).items()}
    train_total = {name: train_group_totals(fs, name) for name in per_split}
    return [{name: metrics_from_counts(correct[h], total, train_total[name], fs.group_names,
                                       (by_class[h], class_total, fs.class_names),
                                       _finite(ces[name][h]) if name in ces else None)
             for name, (correct, total, by_class, class_total) in per_split.items()} for h in range(heads)]


#: a head is collapsed when it predicts one class for the whole validation split, or when
#: its predictions are this confident on average while it is no better than the majority class
SATURATED_CONFIDENCE = 0.99
CHANCE_MARGIN = 0.01
#: ... or when its training cross-entropy exceeds this multiple of the constant head's (the
#: class frequencies' entropy): it is confidently wrong, worse than knowing nothing
PRIOR_MARGIN = 1.01


def prior_entropy(y: torch.Tensor, num_classes: int) -> float:
    """The cross-entropy of the constant head that predicts the class frequencies of ``y``."""
    p = torch.bincount(y.long(), minlength=num_classes).to(torch.float64) / max(1, len(y))
    p = p[p > 0]
    return float(-(p * p.log()).sum())


def confidently_wrong(train_ce: torch.Tensor, y_train: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(G,) bool: heads whose training cross-entropy ``train_ce`` (G,) is above the class
    prior's by ``PRIOR_MARGIN``: a head that ended confidently wrong (a penalty that won
    over the labels) rather than one that learnt little."""
    return train_ce.to(torch.float64) > PRIOR_MARGIN * prior_entropy(y_train, num_classes)


def collapsed_heads(pred: torch.Tensor, confidence: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(G,) bool: heads whose validation predictions collapsed.

    ``pred`` (G, n) predicted classes and ``confidence`` (G, n) their probabilities on the
    validation rows, whose labels are ``y`` (n,). Collapsed: every row predicted as one
    class (while the rows have several), or a mean confidence of at least
    ``SATURATED_CONFIDENCE`` at an accuracy within ``CHANCE_MARGIN`` of always answering
    the majority class, which is what a head looks like after escaping a dominant
    Hessian penalty by saturating (the penalty is then near zero and nothing is learned).
    """
    y = y.to(pred.device)
    if pred.shape[1] == 0 or int(torch.unique(y).numel()) < 2:
        return torch.zeros(pred.shape[0], dtype=torch.bool, device=pred.device)
    one_class = (pred == pred[:, :1]).all(dim=1)
    chance = torch.bincount(y).max().to(torch.float64) / len(y)
    acc = (pred == y).to(torch.float64).mean(dim=1)
    saturated = (confidence.to(torch.float64).mean(dim=1) >= SATURATED_CONFIDENCE) & (acc <= chance + CHANCE_MARGIN)
    return one_class | saturated
