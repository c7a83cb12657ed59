"""The CPU compositions of softmax and log_softmax (moments.basics) against torch's own:
values and gradients, two classes (the sigmoid form) and more, at extreme logits."""

import pytest
import torch

from probe.moments.basics import log_softmax, softmax


@pytest.mark.parametrize("C", [2, 3, 17])
@pytest.mark.parametrize("scale", [1.0, 40.0])
def test_matches_torch_in_value_and_gradient(C, scale):
    gen = torch.Generator().manual_seed(C)
    z = (torch.randn(3, 50, C, generator=gen, dtype=torch.float64) * scale).requires_grad_()
    w = torch.randn(3, 50, C, generator=gen, dtype=torch.float64)
    for ours, theirs in ((log_softmax, torch.log_softmax), (softmax, torch.softmax)):
        a, b = ours(z), theirs(z, -1)
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        ga, = torch.autograd.grad((a * w).sum(), z)
        gb, = torch.autograd.grad((b * w).sum(), z)
        torch.testing.assert_close(ga, gb, rtol=1e-12, atol=1e-12)


def test_two_classes_keep_the_small_probability():
    # σ(−gap) for the unlikely class, not 1 − σ(gap): exp(−40) survives, as in torch's
    z = torch.tensor([[0.0, 40.0], [-700.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(softmax(z), torch.softmax(z, -1), rtol=1e-14, atol=0)
    assert softmax(z)[0, 0] > 0
    assert torch.isfinite(log_softmax(z)).all()
