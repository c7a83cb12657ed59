"""probe.moments.third_order_variance against torch.func: the third derivative of each
domain's mean cross-entropy formed by jacfwd applied twice to its gradient (float64)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import grad, jacfwd

import probe.moments as M
import probe.moments.third as third
from tests.test_moments import TOL, problem, rel, value_and_grad

F64 = torch.float64


def reference_r3(theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor, domains: torch.Tensor,
                 bias: bool = True) -> torch.Tensor:
    """R₃ of one head: every D_e formed by autograd, then their variance (differentiable)."""
    Xt = M.design(X, bias)
    Ds = []
    for e in torch.unique(domains).tolist():
        m = domains == e

        def loss(th, m=m):
            return F.cross_entropy(Xt[m] @ th.T, y[m])

        Ds.append(jacfwd(jacfwd(grad(loss)))(theta).reshape(-1))
    if len(Ds) < 2:
        return theta.sum() * 0
    D = torch.stack(Ds)
    return (D - D.mean(0)).pow(2).sum(1).mean()


def check_third(theta, X, y, dom, methods=("direct", "kernel", "auto"), tol=TOL):
    heads = [theta] if theta.dim() == 2 else list(theta)
    want_v = torch.stack([reference_r3(h, X, y, dom) for h in heads])
    want_g = torch.stack([grad(reference_r3)(h, X, y, dom) for h in heads])
    if theta.dim() == 2:
        want_v, want_g = want_v[0], want_g[0]
    for method in methods:
        v, g = value_and_grad(lambda t, m=method: M.third_order_variance(t, X, dom, method=m), theta)
        assert v.shape == want_v.shape
        assert rel(v, want_v) <= tol, (method, v, want_v)
        assert rel(g, want_g) <= tol, method


CASES = {
    "binary": dict(N=14, d=2, C=2, K=3),
    "C3": dict(N=12, d=2, C=3, K=3),
    "C7-unbalanced": dict(N=13, d=1, C=7, K=3, domains=[0] * 9 + [1] * 3 + [2]),
    "one-sample-domain": dict(N=9, d=2, C=3, K=2, domains=[0] * 8 + [1]),
    "confident-head": dict(N=10, d=2, C=4, K=2, scale=5.0),
}


@pytest.mark.parametrize("case", list(CASES))
def test_third_order_matches_autograd(case):
    check_third(*problem(**CASES[case]))


def test_third_order_many_classes_matches_autograd():
    # C = 65: the autograd reference forms 130³ entries per domain; keep N and d tiny.
    check_third(*problem(N=6, d=1, C=65, K=2, seed=3), methods=("kernel", "direct"))


@pytest.mark.parametrize("C", [2, 5])
@pytest.mark.parametrize("method", ["direct", "kernel"])
def test_head_without_bias_from_logits_matches_autograd(C, method):
    # the trainer's entry point for a head (C, d) without a bias column: value and gradient
    theta, X, y, dom = problem(N=11, d=3, C=C, K=3, G=2, seed=C, domains=[0] * 6 + [1] * 4 + [2])
    theta = theta[..., :-1].contiguous()
    W = M.domain_weights(dom, dtype=F64)
    gram = M.feature_gram(X, bias=False) if method == "kernel" else None

    def r3(t):
        z = torch.einsum("gcd,nd->gnc", t, X)
        return M.third_variance_from_logits(z, X, W, method=method, gram=gram, bias=False)

    v, g = value_and_grad(r3, theta)
    want_v = torch.stack([reference_r3(h, X, y, dom, bias=False) for h in theta])
    want_g = torch.stack([grad(reference_r3)(h, X, y, dom, False) for h in theta])
    assert rel(v, want_v) <= TOL
    assert rel(g, want_g) <= TOL


def test_single_domain_gives_zero_with_zero_gradient():
    theta, X, y, dom = problem(N=8, d=2, C=3, K=1, domains=[4] * 8)
    for method in third.THIRD_METHODS:
        v, g = value_and_grad(lambda t, m=method: M.third_order_variance(t, X, dom, method=m), theta)
        assert float(v) == 0.0 and torch.count_nonzero(g) == 0


def test_grid_agrees_with_autograd_and_separate_calls():
    theta, X, y, dom = problem(N=12, d=2, C=4, K=3, G=3, seed=5)
    check_third(theta, X, y, dom, methods=("kernel",))
    for method in ("direct", "kernel"):
        gv, gg = value_and_grad(lambda t, m=method: M.third_order_variance(t, X, dom, method=m), theta)
        for h in range(3):
            v, g = value_and_grad(lambda t, m=method: M.third_order_variance(t, X, dom, method=m), theta[h])
            assert rel(gv[h], v) <= 1e-12 and rel(gg[h], g) <= 1e-12


def test_binary_grid_matches_direct():
    theta, X, y, dom = problem(N=15, d=3, C=2, K=3, G=2, seed=8)
    gv, gg = value_and_grad(lambda t: M.third_order_variance(t, X, dom, method="kernel"), theta)
    for h in range(2):
        v, g = value_and_grad(lambda t: M.third_order_variance(t, X, dom, method="direct"), theta[h])
        assert rel(gv[h], v) <= 1e-12 and rel(gg[h], g) <= 1e-12


def test_float32_chunked_heads_close_to_float64(monkeypatch):
    theta, X, y, dom = problem(N=40, d=5, C=6, K=3, G=5, seed=2, scale=0.5)
    exact_v, exact_g = value_and_grad(lambda t: M.third_order_variance(t, X, dom, method="direct"), theta)
    # room for one head's N×N intermediates per chunk, so the chunk loop runs five times
    monkeypatch.setattr(third, "CHUNK_BYTES", 5 * 40 * 40 * 4)
    v, g = value_and_grad(lambda t: M.third_order_variance(t, X.float(), dom, method="kernel"), theta.float())
    assert v.dtype == torch.float32
    assert rel(v, exact_v) < 1e-4 and rel(g, exact_g) < 1e-4


def test_precomputed_gram_and_normalize_dc():
    theta, X, y, dom = problem(N=16, d=3, C=5, K=3, G=2, seed=6)
    plain = M.third_order_variance(theta, X, dom)
    assert rel(M.third_order_variance(theta, X, dom, gram=M.feature_gram(X)), plain) < 1e-13
    assert rel(M.third_order_variance(theta, X, dom, normalize="dC"), plain / (3 * 5) ** 2) < 1e-13


def test_kernel_form_is_differentiable_wrt_features_too():
    theta, X, y, dom = problem(N=10, d=2, C=4, K=3, seed=1)
    gx = {}
    for method in ("direct", "kernel"):
        Xg = X.clone().requires_grad_(True)
        (gx[method],) = torch.autograd.grad(M.third_order_variance(theta, Xg, dom, method=method), Xg)
    assert rel(gx["kernel"], gx["direct"]) < 1e-10


def test_auto_never_forms_large_third_derivatives():
    assert M.choose_third_method(1, 512, 768, 65, 4) == "kernel"
    assert M.choose_third_method(1, 512, 768, 2, 4) == "kernel"
    # the kernel's estimated peak does not grow with C² d²
    _, mem = M.third_order_costs(1, 512, 768, 65, 4)["kernel"]
    assert mem < 64 * 1024**2


def test_bad_options_name_the_option():
    theta, X, y, dom = problem(N=6, d=2, C=3, K=2)
    with pytest.raises(ValueError, match="method"):
        M.third_order_variance(theta, X, dom, method="binary")
    with pytest.raises(ValueError, match="normalize"):
        M.third_order_variance(theta, X, dom, normalize="unit")
    with pytest.raises(ValueError, match="gram"):
        M.third_order_variance(theta, X, dom, gram=torch.zeros(2, 2, dtype=F64))


@pytest.mark.cuda
def test_cuda_matches_cpu():
    theta, X, y, dom = problem(N=30, d=4, C=7, K=3, G=2, seed=1)
    dev = torch.device("cuda")
    v, g = value_and_grad(lambda t: M.third_order_variance(t, X, dom), theta)
    vc, gc = value_and_grad(lambda t: M.third_order_variance(t, X.to(dev), dom.to(dev)), theta.to(dev))
    assert vc.device.type == "cuda"
    assert rel(vc.cpu(), v) < 1e-10 and rel(gc.cpu(), g) < 1e-10
