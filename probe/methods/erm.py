"""Empirical risk minimisation, and its group-balanced form: convex, so fitted by the full-batch
solver unless `solver` adam is asked for."""

from __future__ import annotations

from probe.methods.base import GradientMethod, register


@register
class ERM(GradientMethod):
    name = "erm"
    display = "ERM"
    summary = "erm: ERM, the natural-distribution mean cross-entropy"
    convex = True


@register
class Reweight(GradientMethod):
    """Group-balanced ERM: every domain weighs the same in the loss."""

    name = "reweight"
    display = "Reweighting"
    summary = "reweight: group-balanced ERM (the mean of per-domain mean cross-entropies)"
    ce_default = "domain"
    convex = True
