"""``pca``: centre with the training mean and project on the top principal directions of
the training rows. ``pca_dim`` components, or by default ``min(100, train rows // 10, d)``
(``default_pca_dim``): the CMA authors' 100 where there are rows enough to estimate them.

``pca_solver`` says how the directions are found:

* ``exact`` (the default): the eigenvectors of the float64 covariance, each signed so that
  its largest entry is positive; no randomness.
* ``sklearn``: scikit-learn's ``PCA(n_components=k, random_state=s)`` with its default
  solver, the call of the CMA authors' code (``PCA(n_components=100)``). On inputs past 500
  rows or columns with k < 0.8·min(n, d) (Waterbirds) that solver is randomized, so the
  directions are approximate and depend on the seed; scikit-learn ≥ 1.5 takes the
  covariance's eigenvectors instead on tall inputs (d ≤ 1000, n ≥ 10·d: CelebA), where
  earlier versions were randomized too. The state is scikit-learn's ``mean_`` and
  ``components_``, bit for bit its own given the seed (and its version, which the run
  records with the others).
* ``randomized``: the same call with ``svd_solver="randomized"`` on any input.

The seed ``s`` is ``pca_seed`` when given, else the configuration's seed (modulo 2³²,
numpy's legacy range): the authors' script seeds numpy's global generator with the run's
seed right before its PCA, which then draws from it, so theirs is this call with their seed.
"""

from __future__ import annotations

import numpy as np

from base.errors import UserError
from probe.preprocessing.base import Kind, register, torch
from probe.records.grid import Param

#: the most principal directions the default dimension rule keeps (the CMA authors' 100)
PCA_MAX_DIM = 100
#: how the directions are found (module docstring)
PCA_SOLVERS = ("exact", "sklearn", "randomized")


def default_pca_dim(n_train: int, d: int) -> int:
    """Components pca keeps when ``pca_dim`` is not given: min(100, rows // 10, d), at least 1."""
    return max(1, min(PCA_MAX_DIM, n_train // 10, d))


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


def sklearn_directions(X: torch.Tensor, k: int, solver: str, pca_seed: int | None,
                       seed: int | None) -> dict[str, torch.Tensor]:
    """scikit-learn's PCA of ``X`` as the state of this kind: its ``mean_`` and its
    ``components_`` as columns (module docstring)."""
    from sklearn.decomposition import PCA as SklearnPCA

    state = (pca_seed if pca_seed is not None else seed or 0) % 2**32
    pca = SklearnPCA(n_components=k, svd_solver="auto" if solver == "sklearn" else "randomized",
                     random_state=state).fit(X.detach().cpu().numpy())
    mean = torch.as_tensor(np.asarray(pca.mean_), dtype=X.dtype, device=X.device)
    proj = torch.as_tensor(np.ascontiguousarray(pca.components_.T), dtype=X.dtype, device=X.device)
    return {"mean": mean, "proj": proj}


@register
class PCA(Kind):
    name = "pca"
    help = "pca (the default: the top principal directions, pca_dim of them or min(100, train rows/10, d))"
    knobs = (
        Param("pca_dim", "Components kept by the pca preprocessing. Default: min(100, train rows / 10, feature "
                         "width).", kind=int, minimum=1),
        Param("pca_solver", "How pca finds its directions: exact (the covariance's eigenvectors), sklearn "
                            "(scikit-learn's PCA with its default solver, randomized on inputs as large as "
                            "Waterbirds: the CMA authors' call) or randomized (scikit-learn's randomized solver "
                            "on any input).", kind=str, default="exact", choices=PCA_SOLVERS),
        Param("pca_seed", "The random state of pca_solver sklearn or randomized. Default: each configuration's "
                          "seed (the CMA authors' PCA draws from numpy's generator seeded with the run's seed).",
              kind=int, minimum=0, maximum=2**32 - 1),
    )
    state = ("mean", "proj")

    @classmethod
    def seeded(cls, knobs):
        return knobs.get("pca_solver") not in (None, "exact") and knobs.get("pca_seed") is None

    @classmethod
    def fit(cls, X, y, a, knobs):
        k = cls.out_dim(X.shape[1], X.shape[0], knobs, None)
        if knobs.get("pca_solver") in (None, "exact"):
            mean, proj = principal_directions(X, k)
            return {"mean": mean, "proj": proj}
        return sklearn_directions(X, k, knobs["pca_solver"], knobs.get("pca_seed"), knobs.get("seed"))

    @classmethod
    def apply(cls, X, state, owned):
        return (X.sub_(state["mean"]) if owned else X - state["mean"]) @ state["proj"]

    @classmethod
    def out_dim(cls, d, n_train, knobs, state):
        if state is not None:
            return state["proj"].shape[1]
        k = knobs.get("pca_dim")
        return min(k if k is not None else default_pca_dim(n_train, d), d, max(n_train, 1))

    @classmethod
    def check(cls, d, n_train, knobs, where):
        k, limit = knobs.get("pca_dim"), min(n_train, d)
        if k is not None and k > limit:
            raise UserError(f"`pca_dim` {k}: {where} has {n_train} training rows and {d} feature columns, so pca "
                            f"keeps at most {limit} components; give at most {limit}")
