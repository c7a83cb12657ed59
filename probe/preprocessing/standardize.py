"""``standardize``: z-score each feature with the training mean and (sample) std."""

from __future__ import annotations

from probe.preprocessing.base import Kind, register, torch


@register
class Standardize(Kind):
    name = "standardize"
    help = "standardize (z-score with the training mean and std)"
    state = ("mean", "scale")

    @classmethod
    def fit(cls, X, y, a, knobs):
        return {"mean": X.mean(0), "scale": X.std(0).clamp_min(1e-6)}

    @classmethod
    def fit_rows(cls, source, rows, dtype, knobs, chunk: int = 1024):
        """Two moments accumulated in float64 chunks. The chunks are small (1,024 rows of
        768 float64 columns are 6 MB) because a fresh allocation beyond malloc's mmap
        threshold is page-faulted in on every chunk: 8,192-row chunks spent more time
        faulting than summing (16 ms vs 5 ms on 4,795 × 512)."""
        total = torch.zeros(source.shape[1], dtype=torch.float64, device=source.device)
        total_sq = torch.zeros_like(total)
        for i in range(0, len(rows), chunk):
            block = source.index_select(0, rows[i: i + chunk]).to(torch.float64)
            total += block.sum(0)
            total_sq += (block * block).sum(0)
        n = len(rows)
        mean = total / n
        var = (total_sq - n * mean * mean).clamp_min(0) / max(n - 1, 1)
        return {"mean": mean.to(dtype), "scale": var.sqrt().clamp_min(1e-6).to(dtype)}

    @classmethod
    def apply(cls, X, state, owned):
        return X.sub_(state["mean"]).div_(state["scale"]) if owned else (X - state["mean"]) / state["scale"]
