"""What a training step leaves out changes nothing: rows sorted by domain (the trainer's
batches) are read as slices, other orders by index, with the same per-domain quantities;
the trainer's order of a chunk's heads (penalty_order) puts the penalised ones in one
block; a head copied from its penalty-free counterpart until it anneals is the head
computed."""

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


@pytest.mark.parametrize("method", ["cma", "hgp"])
def test_a_head_copied_from_its_counterpart_until_it_anneals_is_the_head_computed(method, monkeypatch):
    """Before its anneal step a head takes its penalty-free counterpart's ERM steps, and the
    trainer copies the counterpart instead of computing it: the results are those of
    computing every head (float64, momentum and an Adam-free SGD, the counterpart's
    divergence and activity included)."""
    from probe.api import fit_grid
    from probe.methods import get_method
    from tests.test_trainer import waterbirds_like

    fs = waterbirds_like(n=(300, 100, 100), seed=3)
    grid = {"alpha": [0.0, 1.0], "beta": [0.0, 10.0], "anneal": [0, 7, 20], "lr": [0.05, 0.2], "preprocess": ["none"]}
    settings = dict(steps=30, batch_size=64, eval_every=10, momentum=0.9, device="cpu", dtype="float64",
                    bounds=False)

    def fit():
        return {r.run_id: r for r in fit_grid(fs, [method], grid, **settings)["rows"][method]}

    copied = fit()
    cls = get_method(method)
    assert cls.follows_penalty_free()
    monkeypatch.setattr(cls, "follows_penalty_free", classmethod(lambda c: False))
    computed = fit()
    assert copied.keys() == computed.keys()
    for key, row in copied.items():
        torch.testing.assert_close(row.theta, computed[key].theta, rtol=1e-9, atol=1e-12)
        assert row.best_step == computed[key].best_step and row.steps_run == computed[key].steps_run
        assert row.metrics["test"]["wga"] == computed[key].metrics["test"]["wga"]
