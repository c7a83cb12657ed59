"""Rows sorted by domain (the trainer's batches) are read as slices, other orders by index:
every per-domain quantity is the same either way, and the trainer's reordering of a
chunk's heads (penalty_order) changes no head's result."""

import numpy as np
import pytest
import torch

from probe import moments
from probe.moments.products import hessian_vector_products


def _rows(seed, n=60, d=5, C=3, K=3):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=gen, dtype=torch.float64)
    y = torch.randint(0, C, (n,), generator=gen)
    dom = torch.randint(0, K, (n,), generator=gen)
    dom[:K] = torch.arange(K)
    theta = torch.randn(4, C, d + 1, generator=gen, dtype=torch.float64)
    return X, y, dom, theta


def test_domain_rows_slices_when_sorted_and_indices_otherwise():
    dom = torch.tensor([0, 0, 2, 2, 2, 5])
    assert moments.domain_rows(dom) == [(slice(0, 2), 2), (slice(2, 5), 3), (slice(5, 6), 1)]
    shuffled = moments.domain_rows(torch.tensor([2, 0, 2, 5, 0, 2]))
    assert [rows.tolist() for rows, _ in shuffled] == [[1, 4], [0, 2, 5], [3]]
    assert [n for _, n in shuffled] == [2, 3, 1]


@pytest.mark.parametrize("C", [2, 3])
def test_sorted_and_shuffled_rows_give_the_same_moments(C):
    X, y, dom, theta = _rows(C, C=C)
    order = torch.argsort(dom, stable=True)
    Xs, ys, ds = X[order], y[order], dom[order]
    torch.testing.assert_close(moments.gradient_variance(theta, Xs, ys, ds), moments.gradient_variance(theta, X, y, dom))
    torch.testing.assert_close(moments.hessian_variance(theta, Xs, ds), moments.hessian_variance(theta, X, dom))
    P, Ps = moments.probabilities(theta, X), moments.probabilities(theta, Xs)
    W, Ws = moments.domain_weights(dom, 3, dtype=X.dtype), moments.domain_weights(ds, 3, dtype=X.dtype)
    Xt, Xts = moments.augment(X), moments.augment(Xs)
    torch.testing.assert_close(moments.domain_sums(Ps, Xts, Ws), moments.domain_sums(P, Xt, W))
    V = moments.domain_sums(P, Xt, W)
    torch.testing.assert_close(hessian_vector_products(Ps, Xts, ds, V), hessian_vector_products(P, Xt, dom, V))


def test_penalty_order_puts_counted_heads_in_one_block():
    from probe.methods import get_method

    cma = get_method("cma")
    configs = [{"alpha": a, "beta": b, "anneal": s} for s in (4000, 0, 8000) for a, b in ((0.0, 0.0), (1.0, 10.0))]
    order = cma.penalty_order(configs)
    assert sorted(order) == list(range(len(configs)))
    ordered = [configs[i] for i in order]
    for step in (0, 4000, 8000):
        counted = np.array([c["alpha"] + c["beta"] > 0 and step >= c["anneal"] for c in ordered])
        on = np.flatnonzero(counted)
        assert on.size == 0 or on[-1] - on[0] + 1 == on.size  # one block
