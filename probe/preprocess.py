"""Feature preprocessing fitted on the training split, saved with each head.

``standardize`` (z-score), ``l2`` (unit norm), ``pca`` (k components), and
``isr-mean`` (remove the spurious directions estimated from group means: for
each class, the difference between the means of the spurious-attribute values,
projected out; the ISR-Mean idea of Wang et al. 2022, as used by the CMA paper's
linear-probing protocol), then z-scored.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from probe.errors import UserError

CHOICES = ("none", "standardize", "l2", "pca", "isr-mean")


@dataclass
class Preprocessor:
    kind: str = "standardize"
    pca_dim: int = 64
    state: dict[str, torch.Tensor] = field(default_factory=dict)

    def fit(self, X: torch.Tensor, y: torch.Tensor, a: torch.Tensor) -> Preprocessor:
        if self.kind not in CHOICES:
            raise UserError(f"--preprocess {self.kind!r} is unknown; choose one of {', '.join(CHOICES)}")
        if self.kind == "pca":
            mean = X.mean(0)
            k = min(self.pca_dim, X.shape[0], X.shape[1])
            _, _, V = torch.pca_lowrank(X - mean, q=k, center=False, niter=4)
            self.state = {"mean": mean, "proj": V[:, :k]}
        elif self.kind == "isr-mean":
            dirs = []
            for c in torch.unique(y):
                attrs = torch.unique(a[(y == c) & (a >= 0)])
                means = [X[(y == c) & (a == v)].mean(0) for v in attrs]
                dirs += [m - means[0] for m in means[1:]]
            if not dirs:
                raise UserError("--preprocess isr-mean needs the spurious attribute `a` with two or more values")
            Q, _ = torch.linalg.qr(torch.stack(dirs, 1))
            self.state = {"spurious": Q}
        if self.kind in ("standardize", "isr-mean"):
            Z = self._project(X)
            self.state.update({"mean": Z.mean(0), "scale": Z.std(0).clamp_min(1e-6)})
        return self

    def fit_rows(self, source: torch.Tensor, rows: torch.Tensor, y: torch.Tensor, a: torch.Tensor,
                 dtype: torch.dtype, chunk: int = 8192) -> Preprocessor:
        """Fit on ``source[rows]`` without materialising it for the cheap kinds.

        none/l2 need nothing and standardize needs two moments, accumulated in
        chunks (float64); pca and isr-mean take one copy of the training rows.
        """
        if self.kind in ("pca", "isr-mean"):
            return self.fit(source[rows].to(dtype), y[rows], a[rows])
        if self.kind == "standardize":
            total = torch.zeros(source.shape[1], dtype=torch.float64, device=source.device)
            total_sq = torch.zeros_like(total)
            for i in range(0, len(rows), chunk):
                block = source[rows[i: i + chunk]].to(torch.float64)
                total += block.sum(0)
                total_sq += (block * block).sum(0)
            n = len(rows)
            mean = total / n
            var = (total_sq - n * mean * mean).clamp_min(0) / max(n - 1, 1)
            self.state = {"mean": mean.to(dtype), "scale": var.sqrt().clamp_min(1e-6).to(dtype)}
            return self
        return self.fit(source[rows[:1]].to(dtype), y[rows[:1]], a[rows[:1]])

    def out_dim(self, d: int) -> int:
        return self.state["proj"].shape[1] if "proj" in self.state else d

    def _project(self, X: torch.Tensor) -> torch.Tensor:
        if "spurious" in self.state:
            Q = self.state["spurious"]
            return X - (X @ Q) @ Q.T
        return X

    def transform(self, X: torch.Tensor) -> torch.Tensor:
        if self.kind == "none":
            return X
        if self.kind == "l2":
            return X / X.norm(dim=1, keepdim=True).clamp_min(1e-12)
        if self.kind == "pca":
            return (X - self.state["mean"]) @ self.state["proj"]
        return (self._project(X) - self.state["mean"]) / self.state["scale"]
