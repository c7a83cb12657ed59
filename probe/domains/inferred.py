"""Domains inferred from the training rows and their classes, reading no group label.

Each source starts from the same *reference head*: ERM on the training rows,
preprocessed by ``pca`` (with the fit's pca knobs), stopped early: ``infer_steps`` steps
of full-batch gradient descent at step size 1/L (``probe.train.gd``), from zero, with the
rows weighted equally. Stopped early because a converged head on high-dimensional
embeddings gets (nearly) every training row right, and then its errors say nothing; an
early-stopped one has learnt the easy, often spurious, directions first (the premise of
JTT and of the error-based sources below).

* ``infer:errors`` (JTT's split, Liu et al., ICML 2021): per class, the rows the reference
  head gets wrong and those it gets right; up to two domains per class.
* ``infer:eiil`` (EIIL, Creager, Jacobsen & Zemel, ICML 2021): a soft assignment
  q_i = σ(u_i) of every row to one of two environments that *maximises* the IRMv1 penalty
  of the reference head, the mean over e of (∂R_e(s·f)/∂s at s = 1)², with R_1 the
  q-weighted and R_2 the (1 − q)-weighted cross-entropy, each divided by the number of
  rows (the authors' ``split_data_opt`` takes ``.mean()`` over all rows: normalised by
  the environment's own weight instead, one row alone would maximise it); Adam (lr
  ``eiil_lr``) for ``eiil_steps`` steps from u ~ N(0, 1) drawn with seed 0 (a symmetric
  start is a stationary point), then environment = 1[q_i > 0.5]. The penalty's gradient
  is closed form: with g_i = Σ_c (p_ic − 1[c = y_i]) z_ic, ∂R_e/∂s = Σ_i q_ei g_i / n.
* ``infer:cluster`` (SPARE-style, and GEORGE's per-class clustering): per class, k-means
  with ``cluster_k`` clusters (scikit-learn, n_init 10, seed 0) on the preprocessed
  features or on the reference head's logits (``cluster_on``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from base.lazy import lazy_import
from probe.domains.base import DomainSource, register
from probe.records.grid import Param

torch = lazy_import("torch")

#: the reference head's preprocessing (the product's default; its knobs are the fit's)
REFERENCE_PREPROCESS = "pca"


def _option(cls: type[DomainSource], settings: Any, name: str) -> Any:
    options = getattr(settings, "options", None) or {}
    return next(p for p in cls.options if p.name == name).option(options)


class Inferred(DomainSource):
    """What the inferred sources share: the reference head (module docstring)."""

    reads = frozenset()
    inferred = True
    options: ClassVar[tuple[Param, ...]] = (
        Param("infer_steps", "Inferred domains: full-batch gradient-descent steps (at step size 1/L) of the "
                             "early-stopped reference ERM head they start from.", kind=int, default=50, minimum=1),
    )

    @classmethod
    def reference(cls, fs: Any, settings: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The training rows preprocessed (n, d), their classes (n,) and the reference head's
        logits on them (n, C), all float64."""
        from probe.moments.basics import logits
        from probe.preprocessing import Preprocessor
        from probe.train.gd import descend

        train = fs.split_mask("train")
        X = torch.as_tensor(fs.features[train], dtype=torch.float64)
        y = torch.as_tensor(fs.y[train])
        options = getattr(settings, "options", None) or {}
        Z = Preprocessor(REFERENCE_PREPROCESS, **options).fit(X, y, torch.as_tensor(fs.a[train])).transform(X)
        w = torch.full((1, len(y)), 1.0 / len(y), dtype=torch.float64)
        head = descend(Z, y, w, _option(cls, settings, "infer_steps"), num_classes=fs.num_classes)[0]
        return Z, y, logits(head, Z)


@register
class Errors(Inferred):
    name = "infer:errors"
    help = "infer:errors (per class, the rows an early-stopped ERM head gets wrong vs right: JTT's split)"

    @classmethod
    def domains(cls, fs, settings):
        _, y, z = cls.reference(fs, settings)
        wrong = (z.argmax(1) != y).numpy()
        codes = 2 * y.numpy() + wrong
        names = {2 * c + e: f"{name}/{'wrong' if e else 'right'}" for c, name in enumerate(fs.class_names)
                 for e in (0, 1)}
        return codes, names


@register
class EIIL(Inferred):
    name = "infer:eiil"
    help = "infer:eiil (two environments that maximise the IRMv1 penalty of that head: EIIL)"
    options = (
        *Inferred.options,
        Param("eiil_steps", "infer:eiil: Adam steps of the environment assignment.", kind=int, default=10000,
              minimum=1),
        Param("eiil_lr", "infer:eiil: Adam's learning rate for the assignment.", default=0.01),
    )

    @classmethod
    def domains(cls, fs, settings):
        _, y, z = cls.reference(fs, settings)
        codes = eiil_environments(z, y, _option(cls, settings, "eiil_steps"), _option(cls, settings, "eiil_lr"))
        return codes, {0: "EIIL env 0", 1: "EIIL env 1"}


def eiil_environments(z: torch.Tensor, y: torch.Tensor, steps: int, lr: float, seed: int = 0) -> np.ndarray:
    """(n,) 0/1: EIIL's thresholded assignment of rows with reference logits ``z`` (module docstring)."""
    p = torch.softmax(z, 1)
    g = ((p - torch.nn.functional.one_hot(y.long(), z.shape[1]).to(z.dtype)) * z).sum(1)
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(len(g), generator=gen, dtype=z.dtype).requires_grad_(True)
    opt = torch.optim.Adam([u], lr=lr)
    for _ in range(steps):
        q = torch.sigmoid(u)
        penalty = 0.5 * ((q * g).mean() ** 2 + ((1 - q) * g).mean() ** 2)
        opt.zero_grad()
        (-penalty).backward()
        opt.step()
    return (torch.sigmoid(u.detach()) > 0.5).long().numpy()


@register
class Clusters(Inferred):
    name = "infer:cluster"
    help = "infer:cluster (per class, k-means on the features or on that head's logits)"
    options = (
        *Inferred.options,
        Param("cluster_k", "infer:cluster: clusters per class.", kind=int, default=2, minimum=2),
        Param("cluster_on", "infer:cluster: what is clustered, the preprocessed features or the reference head's "
                            "logits.", kind=str, default="features", choices=("features", "logits")),
    )

    @classmethod
    def domains(cls, fs, settings):
        from sklearn.cluster import KMeans

        Z, y, z = cls.reference(fs, settings)
        k = _option(cls, settings, "cluster_k")
        points = (Z if _option(cls, settings, "cluster_on") == "features" else z).numpy()
        labels = y.numpy()
        codes = np.zeros(len(labels), np.int64)
        for c in np.unique(labels):
            rows = np.flatnonzero(labels == c)
            found = KMeans(n_clusters=min(k, len(rows)), n_init=10, random_state=0).fit_predict(points[rows])
            codes[rows] = c * k + found
        names = {c * k + j: f"{name}/cluster {j}" for c, name in enumerate(fs.class_names) for j in range(k)}
        return codes, names
