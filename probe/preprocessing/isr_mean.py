"""``isr-mean``: remove the spurious direction(s) estimated from class-conditional means of
the spurious attribute ``a`` (ISR-Mean: Wang, Si, Li & Zhao, "Provable Domain
Generalization via Invariant-Feature Subspace Recovery", ICML 2022, Sec. 4.1):
x ← x − Q Qᵀ x, Q an orthonormal basis of the spurious subspace. With ``isr_class`` c,
the subspace is spanned by the top ``isr_dims`` principal directions of class c's
environment means (the authors' choice of one reference class; their linear-probing
code uses class 0 for Waterbirds and CelebA, 2 for MultiNLI); by default the union over
classes of the mean differences. ``isr_dims`` defaults to all the directions the means
span (E − 1 per class for E attribute values). No rescaling: chain
``isr-mean+standardize`` to z-score afterwards.

``isr_form`` says in which coordinates the rows come out: ``project`` (the default) keeps
the feature coordinates, ``x − QQᵀx``; ``rotate`` is the authors' ``feature_transform``:
``x ↦ Uᵀx`` with the spurious coordinates set to zero, U the orthogonal completion of Q by
a complete QR factorisation (numpy's, as theirs; it depends on the subspace alone, not on
the signs of Q's columns). Both remove the same directions and keep the width, so a head
started at zero or trained to an optimum predicts the same; a head drawn as ``nn.Linear``
draws it (``init`` torch-linear) starts elsewhere in each, and ``rotate`` is the start of
the authors' heads.
"""

from __future__ import annotations

import numpy as np

from base.errors import UserError
from probe.preprocessing.base import Kind, register, torch
from probe.records.grid import Param

#: the coordinates the rows come out in (module docstring)
ISR_FORMS = ("project", "rotate")


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
        if isr_dims > keep:
            raise UserError(f"`isr_dims` {isr_dims}: the attribute's class-conditional means span {keep} "
                            f"direction{'s' if keep != 1 else ''} here; give at most {keep}")
        keep = isr_dims
    return U[:, :keep].contiguous()


@register
class ISRMean(Kind):
    name = "isr-mean"
    help = ("isr-mean (project out the class-conditional spurious-attribute mean directions, ISR-Mean of Wang "
            "et al. 2022)")
    knobs = (
        Param("isr_class", "isr-mean preprocessing: the class whose attribute means give the spurious directions "
                           "(the CMA authors': 0 Waterbirds and CelebA, 2 MultiNLI). Default: every class.",
              kind=int, minimum=0),
        Param("isr_dims", "isr-mean preprocessing: spurious directions removed. Default: all the means span.",
              kind=int, minimum=1),
        Param("isr_form", "isr-mean preprocessing: project (x minus its spurious part, in the feature "
                          "coordinates) or rotate (the CMA authors' coordinates: the spurious directions first, "
                          "set to zero, then their orthogonal completion).", kind=str, default="project",
              choices=ISR_FORMS),
    )
    #: ``spurious`` (d, r) for the project form, ``rotation`` (d, d) for the rotate form
    state = ("spurious", "rotation")
    reads = frozenset({"train_groups"})  # the spurious attribute of the training rows

    @classmethod
    def fit(cls, X, y, a, knobs):
        Q = spurious_basis(X, y, a, knobs.get("isr_class"), knobs.get("isr_dims"))
        if knobs.get("isr_form") != "rotate":
            return {"spurious": Q}
        U = np.linalg.qr(Q.detach().cpu().double().numpy(), mode="complete")[0]
        U[:, :Q.shape[1]] = 0.0  # the authors' scale 0 on the spurious coordinates
        return {"rotation": torch.as_tensor(U, dtype=X.dtype, device=X.device)}

    @classmethod
    def apply(cls, X, state, owned):
        if "rotation" in state:
            return X @ state["rotation"]
        Q = state["spurious"]
        return X.sub_((X @ Q) @ Q.T) if owned else X - (X @ Q) @ Q.T

    @classmethod
    def check(cls, d, n_train, knobs, where):
        dims = knobs.get("isr_dims")
        if dims is not None and dims >= d:
            raise UserError(f"`isr_dims` {dims}: {where} has {d} feature columns at this step, so isr-mean can "
                            f"remove at most {d - 1} directions; give fewer")
