"""Preprocessing steps and chains: exact PCA, ISR-Mean with the authors' choices, the state saved with heads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from base.errors import UserError
from probe.preprocessing import Preprocessor
from probe.preprocessing.pca import default_pca_dim, principal_directions
from probe.preprocessing.standardize import Standardize
from tests.test_trainer import waterbirds_like

F64 = torch.float64


def _train(d: int = 6):
    fs = waterbirds_like(d=d)
    tr = fs.split == 0
    return (torch.as_tensor(fs.features[tr], dtype=F64), torch.as_tensor(fs.y[tr]), torch.as_tensor(fs.a[tr]))


def test_pca_is_exact_and_deterministic() -> None:
    X = _train(8)[0]
    mean, V = principal_directions(X, 3)
    centred = (X - X.mean(0)).numpy()
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    for j in range(3):  # the same directions as a full SVD, in the same order, up to sign
        assert abs(abs(float(np.dot(V[:, j].numpy(), vt[j]))) - 1) < 1e-10
        assert float(V[:, j].abs().argmax() == V[:, j].argmax())  # signed: largest entry positive
    np.testing.assert_allclose(mean.numpy(), X.mean(0).numpy())
    torch.testing.assert_close(principal_directions(X, 3)[1], V)


def test_default_pca_dimension_rule() -> None:
    assert default_pca_dim(4795, 768) == 100 and default_pca_dim(700, 1280) == 70
    assert default_pca_dim(30, 384) == 3 and default_pca_dim(5, 8) == 1 and default_pca_dim(5000, 40) == 40


def test_isr_mean_removes_the_spurious_direction_and_nothing_else() -> None:
    X, y, a = _train()
    pre = Preprocessor("isr-mean").fit(X, y, a)
    Z = pre.transform(X)
    assert pre.state["spurious"].shape == (6, 2)  # one direction per class (two classes)
    for c in (0, 1):
        diff = Z[(y == c) & (a == 1)].mean(0) - Z[(y == c) & (a == 0)].mean(0)
        assert diff.abs().max() < 1e-9
    Q = pre.state["spurious"]
    torch.testing.assert_close(Z, X - X @ Q @ Q.T)  # a projection: no rescaling
    raw = X[(y == 0) & (a == 1)].mean(0) - X[(y == 0) & (a == 0)].mean(0)
    assert raw[1] > 3  # without it the attribute is plain to see in the class-conditional means


def test_isr_mean_with_a_reference_class_is_the_authors_direction() -> None:
    X, y, a = _train()
    pre = Preprocessor("isr-mean", isr_class=0, isr_dims=1).fit(X, y, a)
    Q = pre.state["spurious"]
    want = X[(y == 0) & (a == 1)].mean(0) - X[(y == 0) & (a == 0)].mean(0)
    assert Q.shape == (6, 1)
    assert abs(abs(float(Q[:, 0] @ want / want.norm())) - 1) < 1e-12
    with pytest.raises(UserError, match="`isr_class` 5"):
        Preprocessor("isr-mean", isr_class=5).fit(X, y, a)


def test_a_chain_applies_its_steps_in_order_and_names_their_state() -> None:
    X, y, a = _train(8)
    chain = Preprocessor("pca+isr-mean", pca_dim=4, isr_class=0).fit(X, y, a)
    assert set(chain.state) == {"0.mean", "0.proj", "1.spurious"} and chain.out_dim(8) == 4
    pca = Preprocessor("pca", pca_dim=4).fit(X, y, a)
    isr = Preprocessor("isr-mean", isr_class=0).fit(pca.transform(X), y, a)
    torch.testing.assert_close(chain.transform(X), isr.transform(pca.transform(X)))
    again = Preprocessor("pca+isr-mean", dict(chain.state), pca_dim=4, isr_class=0)  # rebuilt from a head's state
    torch.testing.assert_close(again.transform(X[:5]), chain.transform(X[:5]))


@pytest.mark.parametrize("kind", ["whiten", "pca+whiten", "none+pca"])
def test_unknown_kinds_are_refused(kind: str) -> None:
    with pytest.raises(UserError, match="`preprocess`"):
        Preprocessor(kind)


@pytest.mark.parametrize("kind", ["none", "standardize", "l2", "pca", "isr-mean", "pca+isr-mean", "isr-mean+standardize"])
def test_in_place_transform_matches_and_the_callers_rows_are_kept(kind: str) -> None:
    X, y, a = _train(8)
    pre = Preprocessor(kind, pca_dim=4).fit(X, y, a)
    before = X.clone()
    expected = pre.transform(X)
    assert torch.equal(X, before)  # not owned: the input is left alone
    scratch = X.clone()
    assert torch.equal(pre.transform(scratch, owned=True), expected)  # the same values, bit for bit


def test_standardize_fitted_in_chunks_equals_the_whole_split() -> None:
    X, y, a = _train(8)
    rows = torch.arange(0, X.shape[0], 2)
    whole = Preprocessor("standardize").fit(X[rows], y[rows], a[rows])
    for chunk in (1, 7, 10_000):
        chunked = Standardize.fit_rows(X, rows, F64, {}, chunk=chunk)
        for name in ("mean", "scale"):
            torch.testing.assert_close(chunked[name], whole.state[name], rtol=1e-12, atol=1e-12)
    via_chain = Preprocessor("standardize").fit_rows(X, rows, y, a, F64)  # the chain uses the streaming fit
    torch.testing.assert_close(via_chain.state["mean"], whole.state["mean"], rtol=1e-12, atol=1e-12)


def test_pca_by_scikit_learn_is_its_own_and_seeded_by_the_cohort() -> None:
    """pca_solver sklearn: scikit-learn's PCA state exactly (randomized here: 600 rows of 120
    columns, 6 components), its random state the cohort's seed unless pca_seed fixes one;
    the exact solver draws nothing, so one fit serves every seed."""
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(0)
    X = torch.as_tensor(rng.normal(size=(600, 120)) @ rng.normal(size=(120, 120)))
    y, a = torch.zeros(600, dtype=torch.long), torch.zeros(600, dtype=torch.long)
    pre = Preprocessor("pca", seed=5, pca_dim=6, pca_solver="sklearn").fit(X, y, a)
    want = PCA(n_components=6, random_state=5).fit(X.numpy())
    assert want._fit_svd_solver == "randomized"
    assert torch.equal(pre.state["proj"], torch.as_tensor(want.components_.T))
    assert torch.equal(pre.state["mean"], torch.as_tensor(want.mean_))
    other = Preprocessor("pca", seed=6, pca_dim=6, pca_solver="sklearn")
    assert other.key() != pre.key() and not torch.equal(other.fit(X, y, a).state["proj"], pre.state["proj"])
    fixed = [Preprocessor("pca", seed=s, pca_dim=6, pca_solver="sklearn", pca_seed=5) for s in (1, 2)]
    assert fixed[0].key() == fixed[1].key() and torch.equal(fixed[0].fit(X, y, a).state["proj"], pre.state["proj"])
    exact = [Preprocessor("pca", seed=s, pca_dim=6) for s in (1, 2)]
    assert exact[0].key() == exact[1].key() and not exact[0].seeded()
    with pytest.raises(UserError, match="`pca_solver` 'fast'"):
        Preprocessor("pca", pca_solver="fast")


def test_isr_mean_in_the_authors_coordinates() -> None:
    """isr_form rotate: the rows rotated by the complete QR basis of the spurious direction,
    that coordinate zeroed: the same rows as the projection form up to that rotation, and
    the same whatever the sign the direction was found with."""
    X, y, a = _train()
    proj = Preprocessor("isr-mean", isr_class=0, isr_dims=1).fit(X, y, a)
    rot = Preprocessor("isr-mean", isr_class=0, isr_dims=1, isr_form="rotate").fit(X, y, a)
    Q, R = proj.state["spurious"], rot.state["rotation"]
    U = torch.as_tensor(np.linalg.qr(Q.numpy(), mode="complete")[0])
    assert R.shape == (6, 6) and torch.equal(R[:, 0], torch.zeros(6)) and set(rot.state) == {"rotation"}
    torch.testing.assert_close(R[:, 1:], U[:, 1:], rtol=0, atol=0)
    torch.testing.assert_close(torch.as_tensor(np.linalg.qr(-Q.numpy(), mode="complete")[0])[:, 1:], U[:, 1:])
    torch.testing.assert_close(rot.transform(X) @ R.T, proj.transform(X))  # rotated back: the projection
