"""Tests for lrt.losses.lm: importance weights, chunked LM NLL, weighted token loss."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lrt.losses import chunked_lm_nll, importance_weights, weighted_lm_loss


def _naive(hidden, weight, targets, bias=None):
    logits = hidden @ weight.T
    if bias is not None:
        logits = logits + bias
    return F.cross_entropy(logits.float() if logits.dtype != torch.float64 else logits, targets, reduction="none")


def test_importance_weights_formula_and_alpha():
    ranks = torch.tensor([1, 2, 3, 10, 100, 0, 5, 20, 50, 0])
    w = importance_weights(ranks)
    want = [1 + 1 / math.log2(r + 1) if r >= 1 else 1.0 for r in ranks.tolist()]
    torch.testing.assert_close(w, torch.tensor(want, dtype=torch.float32))
    # values quoted by the fullrank spec
    for r, v in {1: 2.0, 2: 1.631, 3: 1.5, 10: 1.289, 100: 1.150}.items():
        assert w[ranks.tolist().index(r)].item() == pytest.approx(v, abs=5e-4)
    w0 = importance_weights(ranks, alpha=0.25)
    assert w0.dtype == torch.float32
    assert torch.all(w0[ranks == 0] == 0.25) and torch.equal(w0[ranks > 0], w[ranks > 0])
    assert importance_weights(torch.zeros(0, dtype=torch.long)).shape == (0,)
    with pytest.raises(ValueError):
        importance_weights(ranks.float())


@pytest.mark.parametrize(("m", "chunk"), [(7, 3), (8, 4), (5, 64), (1, 1)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_chunked_nll_matches_naive_fp32(m, chunk, with_bias):
    torch.manual_seed(0)
    v, h = 37, 16
    hidden = torch.randn(m, h, requires_grad=True)
    weight = torch.randn(v, h, requires_grad=True)
    bias = torch.randn(v, requires_grad=True) if with_bias else None
    targets = torch.randint(0, v, (m,))
    upstream = torch.rand(m)  # non-uniform upstream grad (e.g. importance weights)
    got = chunked_lm_nll(hidden, weight, targets, chunk_size=chunk, bias=bias)
    inputs = [hidden, weight] + ([bias] if with_bias else [])
    g_got = torch.autograd.grad((got * upstream).sum(), inputs)
    want = _naive(hidden, weight, targets, bias)
    g_want = torch.autograd.grad((want * upstream).sum(), inputs)
    assert got.dtype == torch.float32 and got.shape == (m,)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_chunked_nll_gradcheck_float64():
    torch.manual_seed(1)
    hidden = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(6, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0, 5, 2, -100, 3])
    fn = lambda x, w, b: chunked_lm_nll(x, w, targets, chunk_size=2, bias=b)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (hidden, weight, bias))


def test_chunked_nll_ignore_index_matches_cross_entropy():
    torch.manual_seed(2)
    hidden = torch.randn(6, 8, requires_grad=True)
    weight = torch.randn(11, 8, requires_grad=True)
    targets = torch.tensor([1, -100, 4, 10, -100, 0])
    got = chunked_lm_nll(hidden, weight, targets, chunk_size=4)
    want = _naive(hidden, weight, targets)
    torch.testing.assert_close(got, want)
    assert got[1].item() == 0.0 and got[4].item() == 0.0
    (gh,) = torch.autograd.grad(got.sum(), hidden)
    assert torch.all(gh[1] == 0) and torch.all(gh[4] == 0)


def test_chunked_nll_empty():
    hidden = torch.zeros(0, 4, requires_grad=True)
    weight = torch.randn(6, 4, requires_grad=True)
    out = chunked_lm_nll(hidden, weight, torch.zeros(0, dtype=torch.long), chunk_size=3)
    assert out.shape == (0,)
    out.sum().backward()
    assert hidden.grad.shape == (0, 4) and torch.all(weight.grad == 0)


def test_chunked_nll_bf16_computes_in_fp32():
    torch.manual_seed(3)
    hidden = (torch.randn(9, 16) * 3).to(torch.bfloat16).requires_grad_(True)
    weight = torch.randn(50, 16).to(torch.bfloat16).requires_grad_(True)
    targets = torch.randint(0, 50, (9,))
    got = chunked_lm_nll(hidden, weight, targets, chunk_size=4)
    assert got.dtype == torch.float32
    # reference: same bf16 matmul, then fp32 log-softmax
    want = F.cross_entropy((hidden @ weight.T).float(), targets, reduction="none")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    got.sum().backward()
    assert hidden.grad.dtype == torch.bfloat16 and weight.grad.dtype == torch.bfloat16
    assert torch.isfinite(hidden.grad.float()).all() and torch.isfinite(weight.grad.float()).all()


def test_chunked_nll_frozen_weight_gets_no_grad():
    # LoRA: lm_head frozen -> only the hidden-state gradient is computed
    torch.manual_seed(4)
    hidden = torch.randn(5, 8, requires_grad=True)
    weight = torch.randn(12, 8)
    out = chunked_lm_nll(hidden, weight, torch.randint(0, 12, (5,)), chunk_size=2)
    out.sum().backward()
    assert weight.grad is None and hidden.grad is not None


def test_chunked_nll_never_materialises_full_logits(monkeypatch):
    # Every logits block the function builds is at most [chunk_size, V], forward and backward.
    import lrt.losses.lm as lm

    shapes: list[tuple[int, ...]] = []
    original = lm._chunk_logits

    def spy(h, weight, bias, acc):
        out = original(h, weight, bias, acc)
        shapes.append(tuple(out.shape))
        return out

    monkeypatch.setattr(lm, "_chunk_logits", spy)
    hidden = torch.randn(10, 8, requires_grad=True)
    weight = torch.randn(30, 8, requires_grad=True)
    lm.chunked_lm_nll(hidden, weight, torch.randint(0, 30, (10,)), chunk_size=4).sum().backward()
    assert shapes == [(4, 30), (4, 30), (2, 30)] * 2


def test_chunked_nll_bad_inputs():
    h, w = torch.randn(3, 4), torch.randn(5, 4)
    with pytest.raises(ValueError):
        chunked_lm_nll(h, w, torch.zeros(3, dtype=torch.long), chunk_size=0)
    with pytest.raises(ValueError):
        chunked_lm_nll(h, torch.randn(5, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError):
        chunked_lm_nll(h, w, torch.zeros(2, dtype=torch.long))


def test_weighted_lm_loss_numerator_and_denominators():
    nll = torch.tensor([1.0, 2.0, 3.0, 4.0])
    w = torch.tensor([2.0, 1.0, 1.5, 1.0])
    num, den = weighted_lm_loss(nll, w, "tokens")
    assert num.item() == pytest.approx(2 + 2 + 4.5 + 4) and den.item() == 4
    num2, den2 = weighted_lm_loss(nll, w, "weights")
    assert num2.item() == num.item() and den2.item() == pytest.approx(5.5)
    num3, den3 = weighted_lm_loss(nll)
    assert num3.item() == 10 and den3.item() == 4
    e_num, e_den = weighted_lm_loss(torch.zeros(0), torch.zeros(0))
    assert e_num.item() == 0 and e_den.item() == 0
    with pytest.raises(ValueError):
        weighted_lm_loss(nll, w, "mean")


def test_weighted_lm_loss_global_normalisation_is_additive():
    # Splitting the tokens into micro-batches and dividing by the global denominator equals
    # the loss of the whole batch: the reason both parts are returned.
    torch.manual_seed(5)
    nll, ranks = torch.rand(12), torch.randint(0, 6, (12,))
    w = importance_weights(ranks)
    for mode in ("tokens", "weights"):
        num, den = weighted_lm_loss(nll, w, mode)
        parts = [weighted_lm_loss(nll[a:b], w[a:b], mode) for a, b in ((0, 5), (5, 12))]
        total = sum(p[0] for p in parts) / sum(p[1] for p in parts)
        assert total.item() == pytest.approx((num / den).item(), rel=1e-6)


def test_chunked_nll_under_cpu_autocast_matches_fp32_logsoftmax():
    torch.manual_seed(6)
    hidden = torch.randn(6, 8, requires_grad=True)
    weight = torch.randn(20, 8, requires_grad=True)
    targets = torch.randint(0, 20, (6,))
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        got = chunked_lm_nll(hidden, weight, targets, chunk_size=4)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, _naive(hidden, weight, targets))
    got.sum().backward()
    assert hidden.grad.dtype == torch.float32 and torch.isfinite(weight.grad).all()
