"""linear_cross_entropy_per_token: values and gradients against full-logits torch, chunked and not."""

from __future__ import annotations

import torch

from honed.engine.loss import linear_cross_entropy_per_token, reference_linear_cross_entropy_per_token


def _case(dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(9, 6, generator=g, dtype=dtype)
    weight = torch.randn(11, 6, generator=g, dtype=dtype)
    targets = torch.tensor([3, -100, 0, 10, 5, -100, 7, 1, 2])
    return hidden, weight, targets


def test_values_match_reference_and_ignored_rows_are_zero():
    hidden, weight, targets = _case(torch.float32)
    for chunk in (1, 2, 4, 100):
        got = linear_cross_entropy_per_token(hidden, weight, targets, chunk_rows=chunk)
        torch.testing.assert_close(got, reference_linear_cross_entropy_per_token(hidden, weight, targets), atol=1e-5, rtol=1e-5)
    assert got[1].item() == 0.0 and got[5].item() == 0.0
    # Pinned: row 0 is log Σ exp(logits) - logits[3] computed by hand.
    logits = hidden[0] @ weight.t()
    assert abs(got[0].item() - torch.logsumexp(logits, 0).sub(logits[3]).item()) < 1e-5


def test_gradients_match_reference_under_a_per_row_weighting():
    hidden, weight, targets = _case()
    row_weights = torch.linspace(-1.5, 2.0, 9, dtype=torch.float64)  # different upstream gradient per row, as a preference loss gives
    h1, w1 = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    (linear_cross_entropy_per_token(h1, w1, targets, chunk_rows=2) * row_weights).sum().backward()
    h2, w2 = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    (reference_linear_cross_entropy_per_token(h2, w2, targets) * row_weights).sum().backward()
    torch.testing.assert_close(h1.grad, h2.grad, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(w1.grad, w2.grad, atol=1e-12, rtol=1e-10)


def test_gradcheck_float64():
    hidden, weight, targets = _case()
    h, w = hidden.requires_grad_(True), weight.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: linear_cross_entropy_per_token(a, b, targets, chunk_rows=3), (h, w))


def test_frozen_head_gets_no_gradient():
    hidden, weight, targets = _case()
    h = hidden.requires_grad_(True)
    linear_cross_entropy_per_token(h, weight, targets, chunk_rows=4).sum().backward()
    assert weight.grad is None and h.grad[1].abs().sum().item() == 0.0


def test_no_grad_pass_gives_the_same_values():
    hidden, weight, targets = _case(torch.float32)
    with torch.no_grad():
        got = linear_cross_entropy_per_token(hidden.requires_grad_(True), weight, targets, chunk_rows=3)
    assert not got.requires_grad
    torch.testing.assert_close(got, reference_linear_cross_entropy_per_token(hidden.detach(), weight, targets), atol=1e-5, rtol=1e-5)
