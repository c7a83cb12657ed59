"""Scoring heads on every split, and their bound terms: the one path from a grid of heads
to the figures of their result rows.

The batched trainer, the full-batch solver's chunks and the methods that fit their own
heads (the label-free ones) all score through :func:`score_heads`, so every result row's
metrics mean the same thing whoever fitted it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from probe.diagnostics.bounds import Curve, measure, record, sample_rows
from probe.records.fitset import FitSet
from probe.records.metrics import collapsed_heads, confidently_wrong, metrics_by_head
from probe.train.data import Split
from probe.train.settings import Settings


def score_heads(fs: FitSet, splits: dict[str, Split], theta: torch.Tensor,
                features: dict[str, torch.Tensor] | None = None,
                val_rows: np.ndarray | None = None) -> tuple[list[dict[str, Any]], torch.Tensor]:
    """Per head of ``theta`` (G, C, D), every split's metrics (``probe.records.metrics``),
    and (G,) which heads collapsed: on validation (``collapsed_heads``; on the positions
    ``val_rows`` of its rows alone when given), or confidently wrong on the training rows
    (``confidently_wrong``). ``features``: the splits' preprocessed rows when they are at hand."""
    features = features or {}
    preds, confidence, ce = {}, {}, {}
    for name, sp in splits.items():
        preds[name], confidence[name], ce[name] = sp.score(theta, features.get(name))
    pred_v, conf_v, y_v = preds["val"], confidence["val"], splits["val"].y.to(preds["val"].device)
    if val_rows is not None:  # a method that selects on part of validation is judged there
        idx = torch.as_tensor(val_rows, dtype=torch.long, device=pred_v.device)
        pred_v, conf_v, y_v = pred_v[:, idx], conf_v[:, idx], y_v[idx]
    collapsed = collapsed_heads(pred_v, conf_v, y_v)
    collapsed |= confidently_wrong(ce["train"], splits["train"].y, fs.num_classes).to(collapsed.device)
    return metrics_by_head(fs, preds, ce), collapsed


def bound_rows(tr: Split, cap: int, X: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(X, y, domains) of the fixed sample of at most ``cap`` training rows (probe.diagnostics.bounds),
    taken from ``X``, the split's preprocessed rows, when they are at hand."""
    idx = torch.as_tensor(sample_rows(tr.domain.cpu().numpy(), cap), device=tr.rows.device)
    return (tr.X(idx) if X is None else X.index_select(0, idx)), tr.y[idx], tr.domain[idx]


def kept_bounds(fs: FitSet, tr: Split, theta: torch.Tensor, steps: list[int], settings: Settings,
                curve: Curve | None = None, X: torch.Tensor | None = None) -> list[dict[str, Any] | None]:
    """Each kept head's bound terms (``steps[g]``: its checkpoint), with its curve of the
    three distances when one was recorded along training (probe.diagnostics.bounds); ``X``: the
    training rows preprocessed, when they are at hand."""
    if not settings.bounds:
        return [None] * len(steps)
    X, y, dom = bound_rows(tr, settings.bounds_rows, X)
    figures = measure(theta, X, y, dom, fs.domain_names, settings.bias)
    return [record(fig, domain=fs.domain_source, rows=X.shape[0], train_rows=len(tr.rows), step=int(steps[g]),
                   curve=curve.of_head(g) if curve else None)
            for g, fig in enumerate(figures)]
