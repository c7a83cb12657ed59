"""``l2``: every row scaled to unit Euclidean norm (no fitted state)."""

from __future__ import annotations

from probe.preprocessing.base import Kind, register


@register
class L2(Kind):
    name = "l2"
    help = "l2 (unit rows)"

    @classmethod
    def fit_rows(cls, source, rows, dtype, knobs):
        return {}

    @classmethod
    def apply(cls, X, state, owned):
        norm = X.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return X.div_(norm) if owned else X / norm
