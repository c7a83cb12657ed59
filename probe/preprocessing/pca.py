"""``pca``: centre with the training mean and project on the top principal directions of
the training rows, exactly (the eigenvectors of the float64 covariance, each signed so
that its largest entry is positive). ``pca_dim`` components, or by default
``min(100, train rows // 10, d)`` (``default_pca_dim``): the CMA authors' 100 where there
are rows enough to estimate them."""

from __future__ import annotations

from base.errors import UserError
from probe.preprocessing.base import Kind, register, torch
from probe.records.grid import Param

#: the most principal directions the default dimension rule keeps (the CMA authors' 100)
PCA_MAX_DIM = 100


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


@register
class PCA(Kind):
    name = "pca"
    help = "pca (the default: the top principal directions, pca_dim of them or min(100, train rows/10, d))"
    knobs = (Param("pca_dim", "Components kept by the pca preprocessing. Default: min(100, train rows / 10, "
                              "feature width).", kind=int, minimum=1),)
    state = ("mean", "proj")

    @classmethod
    def fit(cls, X, y, a, knobs):
        mean, proj = principal_directions(X, cls.out_dim(X.shape[1], X.shape[0], knobs, None))
        return {"mean": mean, "proj": proj}

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
