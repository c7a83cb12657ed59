"""Feature preprocessing fitted on the training split, saved with each head.

A preprocessing is one kind or a chain of kinds joined by ``+`` (``pca+isr-mean``),
applied left to right, each fitted on the training rows as the previous ones left them:

* ``none``: the features as stored.
* ``standardize``: z-score each feature with the training mean and (sample) std.
* ``l2``: scale every row to unit Euclidean norm (no fitted state).
* ``pca``: centre with the training mean and project on the top principal directions
  of the training rows (exact: the eigenvectors of the float64 covariance, each signed
  so that its largest entry is positive). ``pca_dim`` components, or by default
  ``min(100, train rows // 10, d)`` (``default_pca_dim``): the CMA authors' 100 where
  there are rows enough to estimate them.
* ``isr-mean``: remove the spurious direction(s) estimated from class-conditional
  means of the spurious attribute ``a`` (ISR-Mean: Wang, Si, Li & Zhao, "Provable
  Domain Generalization via Invariant-Feature Subspace Recovery", ICML 2022, Sec. 4.1):
  x ← x − Q Qᵀ x, Q an orthonormal basis of the spurious subspace. With ``isr_class``
  c, the subspace is spanned by the top ``isr_dims`` principal directions of class c's
  environment means (the authors' choice of one reference class; their
  linear-probing code uses class 0 for Waterbirds and CelebA, 2 for MultiNLI); by
  default the union over classes of the mean differences. ``isr_dims`` defaults to
  all the directions the means span (E − 1 per class for E attribute values). No
  rescaling: chain ``isr-mean+standardize`` to z-score afterwards.

State tensors (the ``pre.*`` entries of a head file): ``mean``, ``scale`` (standardize),
``mean``, ``proj`` (pca), ``spurious`` (isr-mean); in a chain each is prefixed by its
step's position (``1.spurious``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from base.errors import UserError
from base.lazy import lazy_import

torch = lazy_import("torch")

KINDS = ("none", "standardize", "l2", "pca", "isr-mean")
#: the most principal directions the default dimension rule keeps (the CMA authors' 100)
PCA_MAX_DIM = 100


def default_pca_dim(n_train: int, d: int) -> int:
    """Components pca keeps when ``pca_dim`` is not given: min(100, rows // 10, d), at least 1."""
    return max(1, min(PCA_MAX_DIM, n_train // 10, d))


def steps_of(kind: str) -> list[str]:
    """The kinds of a preprocessing (``pca+isr-mean`` -> [pca, isr-mean]); a UserError if unknown."""
    steps = [s.strip() for s in str(kind).split("+")]
    bad = [s for s in steps if s not in KINDS]
    if bad or (len(steps) > 1 and "none" in steps):
        raise UserError(f"`preprocess` {kind!r} is unknown; choose one of {', '.join(KINDS)}, or a chain of them "
                        "joined by + (pca+isr-mean)")
    return steps


@dataclass
class Preprocessor:
    kind: str  # the product's default is the `preprocess` Param's (probe.methods.base)
    pca_dim: int | None = None  # None: default_pca_dim
    state: dict[str, Any] = field(default_factory=dict)  # name -> torch.Tensor
    isr_class: int | None = None
    isr_dims: int | None = None

    def __post_init__(self) -> None:
        self.steps = steps_of(self.kind)

    def _key(self, i: int, name: str) -> str:
        return name if len(self.steps) == 1 else f"{i}.{name}"

    def fit(self, X: torch.Tensor, y: torch.Tensor, a: torch.Tensor) -> Preprocessor:
        """Fit on the training rows ``X`` (labels ``y``, spurious attribute ``a``)."""
        self.state = {}
        for i, step in enumerate(self.steps):
            self.state.update({self._key(i, k): v for k, v in self._fit_step(step, X, y, a).items()})
            X = self._apply(i, step, X)
        return self

    def _fit_step(self, step: str, X: torch.Tensor, y: torch.Tensor, a: torch.Tensor) -> dict[str, torch.Tensor]:
        if step == "standardize":
            return {"mean": X.mean(0), "scale": X.std(0).clamp_min(1e-6)}
        if step == "pca":
            k = self.pca_dim if self.pca_dim is not None else default_pca_dim(X.shape[0], X.shape[1])
            mean, proj = principal_directions(X, min(k, X.shape[0], X.shape[1]))
            return {"mean": mean, "proj": proj}
        if step == "isr-mean":
            return {"spurious": spurious_basis(X, y, a, self.isr_class, self.isr_dims)}
        return {}

    def fit_rows(self, source: torch.Tensor, rows: torch.Tensor, y: torch.Tensor, a: torch.Tensor,
                 dtype: torch.dtype, chunk: int = 1024) -> Preprocessor:
        """Fit on ``source[rows]`` (``y``, ``a`` indexed like ``source``) without
        materialising the training rows for the cheap kinds: none/l2 need nothing and
        standardize two moments, accumulated in chunks (float64); other kinds and
        chains take one copy of the training rows. The chunks are small (1,024 rows
        of 768 float64 columns are 6 MB) because a fresh allocation beyond malloc's mmap
        threshold is page-faulted in on every chunk: 8,192-row chunks spent more time
        faulting than summing (16 ms vs 5 ms on 4,795 × 512)."""
        if self.steps in (["none"], ["l2"]):
            self.state = {}
            return self
        if self.steps != ["standardize"]:
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
        for i, step in enumerate(self.steps):
            if step == "pca":
                d = self.state[self._key(i, "proj")].shape[1]
        return d

    def _apply(self, i: int, step: str, X: torch.Tensor, owned: bool = False) -> torch.Tensor:
        """Step ``i`` on ``X``; ``owned``: X is the caller's scratch and may be overwritten."""
        st = {k: self.state[self._key(i, k)] for k in ("mean", "scale", "proj", "spurious")
              if self._key(i, k) in self.state}
        if step == "standardize":
            return X.sub_(st["mean"]).div_(st["scale"]) if owned else (X - st["mean"]) / st["scale"]
        if step == "l2":
            norm = X.norm(dim=1, keepdim=True).clamp_min(1e-12)
            return X.div_(norm) if owned else X / norm
        if step == "pca":
            return (X.sub_(st["mean"]) if owned else X - st["mean"]) @ st["proj"]
        if step == "isr-mean":
            Q = st["spurious"]
            return X.sub_((X @ Q) @ Q.T) if owned else X - (X @ Q) @ Q.T
        return X

    def transform(self, X: torch.Tensor, owned: bool = False) -> torch.Tensor:
        """The fitted steps applied to ``X``. ``owned=True`` (X is a fresh copy nobody else
        reads, such as a gather of rows) computes in place: the same values without an
        out-of-place temporary per step, which on a CPU costs more than the arithmetic."""
        for i, step in enumerate(self.steps):
            X = self._apply(i, step, X, owned)
            owned = owned or step != "none"  # every other step's output is a fresh tensor
        return X


def principal_directions(X: torch.Tensor, k: int, chunk: int = 16384) -> tuple[torch.Tensor, torch.Tensor]:
    """The training mean and the top-``k`` principal directions (d, k) of ``X``, exactly:
    eigenvectors of the float64 covariance, in decreasing order of variance, each signed
    so that its entry of largest magnitude is positive (a deterministic choice)."""
    X64 = X.to(torch.float64)
    mean = X64.mean(0)
    cov = torch.zeros(X.shape[1], X.shape[1], dtype=torch.float64, device=X.device)
    for i in range(0, X.shape[0], chunk):
        block = X64[i: i + chunk] - mean
        cov += block.T @ block
    vals, vecs = torch.linalg.eigh(cov / max(X.shape[0] - 1, 1))
    V = vecs[:, torch.argsort(vals, descending=True)[:k]]
    signs = torch.sign(V.gather(0, V.abs().argmax(0, keepdim=True)))
    return mean.to(X.dtype), (V * signs).to(X.dtype).contiguous()


def spurious_basis(X: torch.Tensor, y: torch.Tensor, a: torch.Tensor, isr_class: int | None = None,
                   isr_dims: int | None = None) -> torch.Tensor:
    """(d, r) orthonormal basis of the ISR-Mean spurious subspace (module docstring)."""
    classes = torch.unique(y).tolist() if isr_class is None else [isr_class]
    if isr_class is not None and isr_class not in torch.unique(y).tolist():
        raise UserError(f"`isr_class` {isr_class} is not a class of the training rows")
    dirs = []
    for c in classes:
        in_c = (y == c) & (a >= 0)
        values = torch.unique(a[in_c]).tolist()
        if len(values) < 2:
            continue
        means = torch.stack([X[in_c & (a == v)].mean(0) for v in values])
        dirs += list(means - means.mean(0))  # their principal directions: the authors' helper PCA
    if not dirs:
        raise UserError("`preprocess` isr-mean needs the spurious attribute `a` with two or more values "
                        "within a class on the training rows")
    U, s, _ = torch.linalg.svd(torch.stack(dirs, 1), full_matrices=False)
    # Directions that are (numerically) combinations of others add nothing but noise.
    keep = int((s > s.max() * 1e-6).sum())
    if isr_dims is not None:
        if isr_dims < 1:
            raise UserError(f"`isr_dims` {isr_dims}: remove at least one direction")
        keep = min(keep, isr_dims)
    return U[:, :keep].contiguous()
