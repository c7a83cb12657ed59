"""Feature preprocessing fitted on the training split, saved with each head.

Kinds (``--preprocess``):

* ``none``: the features as stored.
* ``standardize``: z-score each feature with the training mean and (sample) std.
* ``l2``: scale every row to unit Euclidean norm (no fitted state).
* ``pca``: centre with the training mean and project on the top ``pca_dim``
  principal directions of the training rows (randomised SVD, ``torch.pca_lowrank``).
* ``isr-mean``: remove the spurious direction(s) estimated from group means, then
  z-score. For each class c and each value v of the spurious attribute a, the
  class-conditional mean μ_{c,v} of the training rows; the differences
  μ_{c,v} − μ_{c,v₀} (v₀ the first value present) span the spurious subspace,
  which is projected out: x ← x − Q Qᵀ x with Q an orthonormal basis of it.
  This is ISR-Mean (Wang, Si, Li & Zhao, "Provable Domain Generalization via
  Invariant-Feature Subspace Recovery", ICML 2022, Sec. 4.1): there the E
  environment means of one chosen class span an (E−1)-dimensional spurious
  subspace found by PCA of those means; with environments = values of ``a`` the
  differences above span the same subspace per class, and the union over classes
  is removed here (their code uses one chosen class). Needs ``a`` on training rows.

State tensors (the ``pre.*`` entries of a head file): ``mean``, ``scale``,
``proj`` (pca), ``spurious`` (isr-mean).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from base.errors import UserError
from base.lazy import lazy_import

torch = lazy_import("torch")

KINDS = ("none", "standardize", "l2", "pca", "isr-mean")


@dataclass
class Preprocessor:
    kind: str = "standardize"
    pca_dim: int = 64
    state: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UserError(f"`preprocess` {self.kind!r} is unknown; choose one of {', '.join(KINDS)}")

    def fit(self, X: torch.Tensor, y: torch.Tensor, a: torch.Tensor) -> Preprocessor:
        """Fit on the training rows ``X`` (labels ``y``, spurious attribute ``a``)."""
        self.state = {}
        if self.kind == "pca":
            mean = X.mean(0)
            k = min(self.pca_dim, X.shape[0], X.shape[1])
            # Seeded: pca_lowrank draws a random sketch, and a rerun must give the same head.
            with torch.random.fork_rng(devices=[X.device] if X.device.type == "cuda" else []):
                torch.manual_seed(0)
                _, _, V = torch.pca_lowrank(X - mean, q=k, center=False, niter=4)
            self.state = {"mean": mean, "proj": V[:, :k].contiguous()}
        elif self.kind == "isr-mean":
            self.state = {"spurious": spurious_basis(X, y, a)}
        if self.kind in ("standardize", "isr-mean"):
            Z = self._project(X)
            self.state.update({"mean": Z.mean(0), "scale": Z.std(0).clamp_min(1e-6)})
        return self

    def fit_rows(self, source: torch.Tensor, rows: torch.Tensor, y: torch.Tensor, a: torch.Tensor,
                 dtype: torch.dtype, chunk: int = 8192) -> Preprocessor:
        """Fit on ``source[rows]`` (``y``, ``a`` indexed like ``source``) without
        materialising the training rows for the cheap kinds: none/l2 need nothing and
        standardize two moments, accumulated in chunks (float64); pca and isr-mean
        take one copy of the training rows."""
        if self.kind in ("none", "l2"):
            self.state = {}
            return self
        if self.kind in ("pca", "isr-mean"):
            return self.fit(source.index_select(0, rows).to(dtype), y[rows], a[rows])
        total = torch.zeros(source.shape[1], dtype=torch.float64, device=source.device)
        total_sq = torch.zeros_like(total)
        for i in range(0, len(rows), chunk):
            block = source.index_select(0, rows[i: i + chunk]).to(torch.float64)
            total += block.sum(0)
            total_sq += (block * block).sum(0)
        n = len(rows)
        mean = total / n
        var = (total_sq - n * mean * mean).clamp_min(0) / max(n - 1, 1)
        self.state = {"mean": mean.to(dtype), "scale": var.sqrt().clamp_min(1e-6).to(dtype)}
        return self

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


def spurious_basis(X: torch.Tensor, y: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """(d, r) orthonormal basis of the ISR-Mean spurious subspace (module docstring)."""
    dirs = []
    for c in torch.unique(y).tolist():
        in_c = (y == c) & (a >= 0)
        values = torch.unique(a[in_c]).tolist()
        means = [X[in_c & (a == v)].mean(0) for v in values]
        dirs += [m - means[0] for m in means[1:]]
    if not dirs:
        raise UserError("`preprocess` isr-mean needs the spurious attribute `a` with two or more values "
                        "within a class on the training rows")
    U, s, _ = torch.linalg.svd(torch.stack(dirs, 1), full_matrices=False)
    # Directions that are (numerically) combinations of others add nothing but noise.
    keep = s > s.max() * 1e-6
    return U[:, keep].contiguous()
