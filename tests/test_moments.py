"""probe.moments against autograd: values and theta-gradients of R_g and R_H."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import probe.moments as M

F64 = torch.float64
TOL = 1e-8


# ----------------------------------------------------------------------- references


def _domain_losses(theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor, domains: torch.Tensor, bias: bool = True):
    """Per present domain, a closure computing that domain's mean CE of a (C, d+1) head
    (``bias=False``: a (C, d) head)."""
    Xt = torch.cat([X, torch.ones(X.shape[0], 1, dtype=X.dtype)], dim=1) if bias else X
    out = []
    for e in torch.unique(domains).tolist():
        m = domains == e
        out.append(lambda th, m=m: F.cross_entropy(Xt[m] @ th.T, y[m]))
    return out


def reference(theta: torch.Tensor, X, y, domains, bias: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(R_g, R_H) of one head from autograd derivatives, differentiable w.r.t. theta."""
    losses = _domain_losses(theta, X, y, domains, bias)
    if len(losses) < 2:
        z = theta.sum() * 0
        return z, z
    n = theta.numel()
    grads = torch.stack([torch.autograd.grad(L(theta), theta, create_graph=True)[0] for L in losses])
    hess = torch.stack([
        torch.autograd.functional.hessian(L, theta, create_graph=True, vectorize=True).reshape(n, n)
        for L in losses
    ])
    rg = (grads - grads.mean(0)).pow(2).sum() / len(losses)
    rh = (hess - hess.mean(0)).pow(2).sum() / len(losses)
    return rg, rh


def reference_grid(theta, X, y, domains, bias=True):
    pairs = [reference(t, X, y, domains, bias) for t in theta]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    scale = max(float(b.norm()), 1e-300)
    return float((a - b).norm()) / scale


def value_and_grad(fn, theta):
    th = theta.detach().clone().requires_grad_(True)
    v = fn(th)
    (g,) = torch.autograd.grad(v.sum(), th)
    return v.detach(), g


def problem(N, d, C, K, G=None, seed=0, dtype=F64, scale=1.0, domains=None):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(N, d, generator=gen, dtype=dtype)
    y = torch.randint(0, C, (N,), generator=gen)
    dom = torch.randint(0, K, (N,), generator=gen) if domains is None else torch.tensor(domains)
    shape = (C, d + 1) if G is None else (G, C, d + 1)
    theta = (torch.randn(shape, generator=gen, dtype=dtype) * scale)
    return theta, X, y, dom


def hess_methods(C):
    return ["direct", "kernel", "auto"] + (["binary"] if C == 2 else [])


def check_against_reference(theta, X, y, dom, tol=TOL, bias=True):
    th = theta.detach().clone().requires_grad_(True)
    rg, rh = reference(th, X, y, dom, bias) if th.dim() == 2 else reference_grid(th, X, y, dom, bias)
    ref_g = (rg.detach(), torch.autograd.grad(rg.sum(), th, retain_graph=True)[0])
    ref_h = (rh.detach(), torch.autograd.grad(rh.sum(), th)[0])
    C = theta.shape[-2]
    for method in hess_methods(C):
        v, g = value_and_grad(lambda t, m=method: M.hessian_variance(t, X, dom, method=m, bias=bias), theta)
        assert v.shape == ref_h[0].shape
        assert rel(v, ref_h[0]) <= tol, (method, v, ref_h[0])
        assert rel(g, ref_h[1]) <= tol, method
    for method in M.GRAD_METHODS:
        v, g = value_and_grad(lambda t, m=method: M.gradient_variance(t, X, y, dom, method=m, bias=bias), theta)
        assert v.shape == ref_g[0].shape
        assert rel(v, ref_g[0]) <= tol, (method, v, ref_g[0])
        assert rel(g, ref_g[1]) <= tol, method
    # the combined call agrees too
    pt_v, pt_g = value_and_grad(
        lambda t: (lambda p: p.grad_variance + 2 * p.hess_variance)(M.penalty_terms(t, X, y, dom, bias=bias)), theta)
    assert rel(pt_v, ref_g[0] + 2 * ref_h[0]) <= tol
    assert rel(pt_g, ref_g[1] + 2 * ref_h[1]) <= tol


# --------------------------------------------------------------- against autograd


CASES = {
    "binary-balanced": dict(N=24, d=3, C=2, K=3),
    "C3": dict(N=20, d=2, C=3, K=3),
    "C10-unbalanced": dict(N=30, d=2, C=10, K=3, domains=[0] * 24 + [1] * 5 + [2]),
    "C65-small-d": dict(N=40, d=2, C=65, K=4),
    "one-sample-domain": dict(N=12, d=3, C=2, K=2, domains=[0] * 11 + [1]),
    "gappy-ids": dict(N=15, d=2, C=4, K=7, domains=[2] * 5 + [5] * 6 + [6] * 4),
    "confident-head": dict(N=20, d=3, C=5, K=2, scale=6.0),
    "wide-features": dict(N=10, d=9, C=2, K=2),  # direct's other contraction order
}


@pytest.mark.parametrize("case", list(CASES))
def test_single_head_matches_autograd(case):
    theta, X, y, dom = problem(**CASES[case])
    check_against_reference(theta, X, y, dom)


@pytest.mark.parametrize("case", ["binary-balanced", "C3", "C10-unbalanced"])
def test_bias_free_heads_match_autograd(case):
    """A head without a bias column (the trainer's `--no-bias`, the CMA authors' nn.Linear):
    every public function takes ``bias=False`` and agrees with autograd in float64, for
    every method (binary, the C=3 columns form, the many-class elementwise form)."""
    theta, X, y, dom = problem(G=2, seed=3, **CASES[case])
    theta = theta[..., :-1].contiguous()  # (G, C, d)
    check_against_reference(theta, X, y, dom, bias=False)
    for g in range(2):
        losses = _domain_losses(theta[g], X, y, dom, bias=False)
        grads = M.per_domain_gradients(theta[g], X, y, dom, bias=False)
        for k, L in enumerate(losses):
            th = theta[g].clone().requires_grad_(True)
            torch.testing.assert_close(grads[k], torch.autograd.grad(L(th), th)[0], rtol=TOL, atol=1e-12)
        torch.testing.assert_close(M.per_domain_losses(theta[g], X, y, dom, bias=False),
                                   torch.stack([L(theta[g]) for L in losses]), rtol=TOL, atol=1e-12)
    d = X.shape[1]
    with pytest.raises(ValueError, match=f"last dimension is {d}; it must be d = {d - 1} .no bias column"):
        M.penalty_terms(theta, X[:, 1:], y, dom, bias=False)  # a head one column wider than the rows
    with pytest.raises(ValueError, match="must be d\\+1"):
        M.hessian_variance(theta, X, dom)  # without bias=False it is read as having a bias


def test_grid_matches_autograd_and_separate_calls():
    theta, X, y, dom = problem(N=18, d=2, C=3, K=3, G=3, seed=4)
    check_against_reference(theta, X, y, dom)
    for method in hess_methods(3):
        grid_v, grid_g = value_and_grad(lambda t, m=method: M.hessian_variance(t, X, dom, method=m), theta)
        assert grid_v.shape == (3,)
        for g in range(3):
            v, gr = value_and_grad(lambda t, m=method: M.hessian_variance(t, X, dom, method=m), theta[g])
            assert rel(grid_v[g], v) <= 1e-12 and rel(grid_g[g], gr) <= 1e-12
    rg, rg_grad = value_and_grad(lambda t: M.gradient_variance(t, X, y, dom), theta)
    for g in range(3):
        v, gr = value_and_grad(lambda t: M.gradient_variance(t, X, y, dom), theta[g])
        assert rel(rg[g], v) <= 1e-12 and rel(rg_grad[g], gr) <= 1e-12


def test_binary_grid_matches_autograd():
    theta, X, y, dom = problem(N=16, d=3, C=2, K=2, G=2, seed=7)
    check_against_reference(theta, X, y, dom)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(N=st.integers(1, 16), d=st.integers(1, 3), C=st.sampled_from([2, 3, 4, 7]),
       K=st.integers(1, 4), G=st.sampled_from([None, 2]), seed=st.integers(0, 10_000))
def test_random_shapes_match_autograd(N, d, C, K, G, seed):
    theta, X, y, dom = problem(N=N, d=d, C=C, K=K, G=G, seed=seed)
    check_against_reference(theta, X, y, dom)


# --------------------------------------------------------------------- edge cases


@pytest.mark.parametrize("domains", [[3] * 9, []])
def test_fewer_than_two_domains_give_zero_with_zero_gradient(domains):
    N = len(domains)
    theta, X, y, dom = problem(N=N, d=2, C=3, K=1, domains=domains)
    dom = dom.to(torch.int64)
    for fn in (lambda t: M.hessian_variance(t, X, dom), lambda t: M.gradient_variance(t, X, y, dom),
               lambda t: M.penalty_terms(t, X, y, dom).hess_variance):
        v, g = value_and_grad(fn, theta)
        assert float(v) == 0.0
        assert torch.count_nonzero(g) == 0


def test_missing_domain_ids_are_skipped_and_reported():
    theta, X, y, dom = problem(N=12, d=2, C=3, K=1, domains=[1] * 4 + [4] * 5 + [6] * 3)
    ids = M.present_domains(dom, num_domains=8)
    assert ids.tolist() == [1, 4, 6]
    W = M.domain_weights(dom, num_domains=8)
    assert W.shape == (12, 3)
    assert torch.allclose(W.sum(0), torch.ones(3, dtype=F64))
    losses = M.per_domain_losses(theta, X, y, dom, num_domains=8)
    Xt = M.augment(X)
    for k, e in enumerate(ids.tolist()):
        m = dom == e
        assert torch.allclose(losses[k], F.cross_entropy(Xt[m] @ theta.T, y[m]))
    grads = M.per_domain_gradients(theta, X, y, dom, num_domains=8)
    assert grads.shape == (3, 3, 3)
    # the same penalty as with the ids renumbered 0..2
    dense = torch.unique(dom, return_inverse=True)[1]
    assert rel(M.hessian_variance(theta, X, dom, num_domains=8), M.hessian_variance(theta, X, dense)) < 1e-14


def test_per_domain_gradients_match_autograd():
    theta, X, y, dom = problem(N=14, d=3, C=4, K=3, G=2, seed=2)
    grads = M.per_domain_gradients(theta, X, y, dom)
    for g in range(2):
        for k, L in enumerate(_domain_losses(theta[g], X, y, dom)):
            th = theta[g].clone().requires_grad_(True)
            (ref,) = torch.autograd.grad(L(th), th)
            assert rel(grads[g, k], ref) < 1e-12


# -------------------------------------------------------------------- normalisation


def test_normalize_dc_divides_gradients_and_hessians_by_d_times_c():
    theta, X, y, dom = problem(N=20, d=3, C=4, K=3, G=2, seed=5)
    dc = 3 * 4  # d excludes the bias column
    for method in hess_methods(4):
        plain = M.hessian_variance(theta, X, dom, method=method)
        scaled = M.hessian_variance(theta, X, dom, method=method, normalize="dC")
        assert rel(scaled, plain / dc**2) < 1e-13
    plain = M.gradient_variance(theta, X, y, dom)
    assert rel(M.gradient_variance(theta, X, y, dom, normalize="dC"), plain / dc**2) < 1e-13
    assert rel(M.per_domain_gradients(theta, X, y, dom, normalize="dC"),
               M.per_domain_gradients(theta, X, y, dom) / dc) < 1e-13
    pt = M.penalty_terms(theta, X, y, dom, normalize="dC")
    assert rel(pt.hess_variance, M.hessian_variance(theta, X, dom) / dc**2) < 1e-12


def test_normalize_dc_matches_scaled_autograd_hessians():
    theta, X, y, dom = problem(N=16, d=2, C=3, K=2, seed=9)
    _, rh = reference(theta.clone().requires_grad_(True), X, y, dom)
    assert rel(M.hessian_variance(theta, X, dom, normalize="dC"), rh / (2 * 3) ** 2) < TOL


# ------------------------------------------------------- reuse, precision, choices


def test_precomputed_kernel_and_gram_give_the_same_penalties():
    theta, X, y, dom = problem(N=25, d=4, C=6, K=3, G=2, seed=3)
    S = M.feature_kernel(X)
    Xt = M.augment(X)
    assert torch.allclose(S, (Xt @ Xt.T) ** 2)
    assert rel(M.hessian_variance(theta, X, dom, method="kernel", kernel=S),
               M.hessian_variance(theta, X, dom, method="direct")) < 1e-12
    gram = M.feature_gram(X)
    assert rel(M.gradient_variance(theta, X, y, dom, method="kernel", gram=gram),
               M.gradient_variance(theta, X, y, dom, method="direct")) < 1e-12
    pt = M.penalty_terms(theta, X, y, dom, gram=gram)
    assert rel(pt.hess_variance, M.hessian_variance(theta, X, dom, method="direct")) < 1e-12


def test_float32_close_to_float64_including_chunked_heads(monkeypatch):
    theta, X, y, dom = problem(N=64, d=8, C=9, K=4, G=5, seed=11, scale=0.5)
    exact_v, exact_g = value_and_grad(lambda t: M.hessian_variance(t, X, dom, method="direct"), theta)
    # one head's N×N block per chunk, so the chunk loop runs
    monkeypatch.setattr(M, "ELEMENTWISE_CHUNK_BYTES", 64 * 64 * 4)
    for method in ("kernel", "direct", "auto"):
        v, g = value_and_grad(lambda t, m=method: M.hessian_variance(t, X.float(), dom, method=m), theta.float())
        assert v.dtype == torch.float32
        assert rel(v, exact_v) < 1e-4 and rel(g, exact_g) < 1e-4, method


def test_kernel_form_is_differentiable_wrt_features_too():
    theta, X, y, dom = problem(N=12, d=2, C=5, K=3, seed=8)
    gx = {}
    for method in ("direct", "kernel"):
        Xg = X.clone().requires_grad_(True)
        (gx[method],) = torch.autograd.grad(M.hessian_variance(theta, Xg, dom, method=method), Xg)
    assert rel(gx["kernel"], gx["direct"]) < 1e-10


def test_auto_picks_by_cost_and_memory():
    # N < d: the N×N kernel; N >> d with two classes: the d̃×d̃ moments.
    assert M.choose_hessian_method(1, 512, 768, 2, 4) == "kernel"
    assert M.choose_hessian_method(1, 20_000, 16, 2, 4) == "binary"
    assert M.choose_hessian_method(1, 512, 768, 65, 4) == "kernel"
    # direct would need the 65·769 square per domain: never inside the budget
    flops, mem = M.hessian_costs(1, 512, 768, 65, 4)["direct"]
    assert mem > M.AUTO_MEMORY_BUDGET
    # one head: the per-domain gradients beat a fresh Gram matrix; a grid, or a Gram
    # matrix already computed for R_H, tips it to the kernel form
    assert M.choose_gradient_method(1, 512, 768, 65, 4) == "direct"
    assert M.choose_gradient_method(64, 512, 768, 65, 4) == "kernel"
    assert M.choose_gradient_method(1, 512, 768, 65, 4, gram_given=True) == "kernel"
    assert M.choose_gradient_method(1, 50_000, 8, 2, 4) == "direct"


@pytest.mark.cuda
def test_cuda_matches_cpu():
    theta, X, y, dom = problem(N=30, d=4, C=7, K=3, G=2, seed=1)
    cpu = M.penalty_terms(theta, X, y, dom)
    dev = torch.device("cuda")
    gpu = M.penalty_terms(theta.to(dev), X.to(dev), y.to(dev), dom.to(dev))
    assert gpu.hess_variance.device.type == "cuda"
    assert rel(gpu.hess_variance.cpu(), cpu.hess_variance) < 1e-10
    assert rel(gpu.grad_variance.cpu(), cpu.grad_variance) < 1e-10


# ----------------------------------------------------------------------- validation


def _base():
    return problem(N=10, d=3, C=3, K=2, seed=0)


@pytest.mark.parametrize("mutate, arg", [
    (lambda t, X, y, d: (t[0], X, y, d), "theta"),
    (lambda t, X, y, d: (t, X[:, :2], y, d), "X"),
    (lambda t, X, y, d: (t, X.float(), y, d), "dtype"),
    (lambda t, X, y, d: (t, X, y[:5], d), "y"),
    (lambda t, X, y, d: (t, X, y + 3, d), "y"),
    (lambda t, X, y, d: (t, X, y.int(), d), "y"),
    (lambda t, X, y, d: (t, X, y, d[:4]), "domains"),
    (lambda t, X, y, d: (t, X, y, d - 1 - d.max()), "domains"),
    (lambda t, X, y, d: (t, X, y, d.float()), "domains"),
    (lambda t, X, y, d: (t, X.index_fill(0, torch.tensor([2]), float("nan")), y, d), "X"),
    (lambda t, X, y, d: (t.index_fill(1, torch.tensor([0]), float("inf")), X, y, d), "theta"),
])
def test_bad_inputs_raise_value_error_naming_the_argument(mutate, arg):
    theta, X, y, dom = mutate(*_base())
    with pytest.raises(ValueError, match=arg):
        M.gradient_variance(theta, X, y, dom)
    if arg != "y":
        with pytest.raises(ValueError, match=arg):
            M.hessian_variance(theta, X, dom)


def test_bad_options_raise_value_error_naming_the_option():
    theta, X, y, dom = _base()
    with pytest.raises(ValueError, match="num_domains"):
        M.hessian_variance(theta, X, dom, num_domains=1)
    with pytest.raises(ValueError, match="domains"):
        M.present_domains(dom + 5, num_domains=3)
    with pytest.raises(ValueError, match="method"):
        M.hessian_variance(theta, X, dom, method="fast")
    with pytest.raises(ValueError, match="binary"):
        M.hessian_variance(theta, X, dom, method="binary")  # C = 3
    with pytest.raises(ValueError, match="normalize"):
        M.gradient_variance(theta, X, y, dom, normalize="d")
    with pytest.raises(ValueError, match="kernel"):
        M.hessian_variance(theta, X, dom, kernel=torch.zeros(3, 3, dtype=F64))
    with pytest.raises(ValueError, match="gram"):
        M.gradient_variance(theta, X, y, dom, gram=torch.zeros(10, 10))


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("C", [1, 2, 3, 10, 15, 16, 65])
def test_log_softmax_is_torchs_for_every_width(C: int, dtype: torch.dtype) -> None:
    """The composed small-class form and torch's kernel agree, at extreme logits too."""
    gen = torch.Generator().manual_seed(C)
    z = torch.randn(3, 37, C, generator=gen, dtype=dtype) * 30
    z[0, 0] = 1e4  # a row whose every logit is huge: the shift keeps it finite
    z[0, 1, 0] = -1e4  # one vanishing class
    if C > 1:
        z[1, 2, -1] = float("-inf")  # a class masked out
    expected = torch.log_softmax(z, -1)
    got = M.log_softmax(z)
    assert got.shape == z.shape and got.dtype == dtype
    torch.testing.assert_close(got, expected, rtol=0, atol=8 * torch.finfo(dtype).eps * 30)
    if C > 1:
        assert bool(torch.isneginf(got[1, 2, -1]))
