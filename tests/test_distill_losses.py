"""Score-distillation losses (margin_mse, kl_distill) against float64 references written here from the
formulas, against sentence-transformers' CrossEncoder MarginMSELoss, and through the registry."""
from __future__ import annotations

import math

import pytest
import torch

from lrt.losses import TEACHER_SCORE_LOSSES, get_ranking_loss, kl_distill, margin_mse
from lrt.losses.registry import check_loss_params


def _lists(seed: int = 0):
    """3 lists padded to N=6 (6, 4 and 1 valid candidates); garbage in the padding of both tensors."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(3, 6, generator=g, dtype=torch.float64) * 3
    t = torch.randn(3, 6, generator=g, dtype=torch.float64) * 5 + 2
    ranks = torch.tensor([[3, 1, 6, 2, 5, 4], [2, 0, 4, 1, 3, 0], [0, 0, 1, 0, 0, 0]])
    pad = ranks <= 0
    s = torch.where(pad, torch.tensor(1e30, dtype=torch.float64), s)
    t = torch.where(pad, torch.tensor(float("nan"), dtype=torch.float64), t)
    return s, ranks, t


def _valid(ranks_row):
    return [i for i, r in enumerate(ranks_row.tolist()) if r > 0]


def ref_margin_mse(s, ranks, t, margins="positive"):
    out = []
    for b in range(s.shape[0]):
        v = _valid(ranks[b])
        if len(v) < 2:
            out.append(0.0)
            continue
        S, T = s[b].tolist(), t[b].tolist()
        if margins == "positive":
            p = next(i for i in v if int(ranks[b, i]) == 1)
            errs = [((S[p] - S[j]) - (T[p] - T[j])) ** 2 for j in v if j != p]
        else:
            errs = [((S[i] - S[j]) - (T[i] - T[j])) ** 2 for a, i in enumerate(v) for j in v[a + 1:]]
        out.append(sum(errs) / len(errs))
    return out


def ref_kl(s, ranks, t, tau):
    out = []
    for b in range(s.shape[0]):
        v = _valid(ranks[b])
        if len(v) < 2:
            out.append(0.0)
            continue
        zs = [float(s[b, i]) / tau for i in v]
        zt = [float(t[b, i]) / tau for i in v]
        ms, mt = max(zs), max(zt)
        ls = math.log(sum(math.exp(z - ms) for z in zs)) + ms
        lt = math.log(sum(math.exp(z - mt) for z in zt)) + mt
        kl = sum(math.exp(a - lt) * ((a - lt) - (c - ls)) for a, c in zip(zt, zs))
        out.append(tau * tau * kl)
    return out


@pytest.mark.parametrize("margins", ["positive", "all_pairs"])
def test_margin_mse_matches_the_formula_in_float64(margins):
    s, ranks, t = _lists()
    got = margin_mse(s, ranks, t, reduction="none", margins=margins)
    assert got.dtype == torch.float64
    want = torch.tensor(ref_margin_mse(s, ranks, t, margins), dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert torch.allclose(margin_mse(s, ranks, t, margins=margins, reduction="sum"), want.sum())
    assert torch.allclose(margin_mse(s, ranks, t, margins=margins), want.sum() / 3)  # mean over all B lists


@pytest.mark.parametrize("tau", [1.0, 0.5, 3.0])
def test_kl_distill_matches_the_formula_in_float64(tau):
    s, ranks, t = _lists(1)
    got = kl_distill(s, ranks, t, reduction="none", temperature=tau)
    want = torch.tensor(ref_kl(s, ranks, t, tau), dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert got[:2].gt(0).all() and got[2] == 0  # a 1-candidate list contributes exactly 0


def test_gradients_match_autograd_of_the_reference_and_skip_padding():
    s, ranks, t = _lists(2)
    valid = ranks > 0
    for fn, ref, kw in ((margin_mse, ref_margin_mse, {"margins": "all_pairs"}), (margin_mse, ref_margin_mse, {}),
                        (kl_distill, ref_kl, {"temperature": 2.0})):
        x = torch.where(valid, s, 0.0).requires_grad_(True)
        fn(x, ranks, t, reduction="sum", **kw).backward()
        # finite differences of the independent reference, valid entries only
        eps, num = 1e-6, torch.zeros_like(x)
        for b, i in valid.nonzero().tolist():
            hi, lo = x.detach().clone(), x.detach().clone()
            hi[b, i] += eps
            lo[b, i] -= eps
            args = (t, 2.0) if fn is kl_distill else (t, kw.get("margins", "positive"))
            num[b, i] = (sum(ref(hi, ranks, *args)) - sum(ref(lo, ranks, *args))) / (2 * eps)
        torch.testing.assert_close(x.grad, num, rtol=1e-5, atol=1e-6)
        assert torch.equal(x.grad[~valid], torch.zeros_like(x.grad[~valid]))
    # padded student scores of 1e30 and NaN teacher scores in padding change nothing
    assert torch.isfinite(margin_mse(s, ranks, t, reduction="none")).all()
    assert torch.isfinite(kl_distill(s, ranks, t, reduction="none")).all()


def test_invariances_and_zero_at_the_teacher():
    s, ranks, t = _lists(3)
    # student = teacher + per-list constant: no margin error, no divergence
    same = torch.where(ranks > 0, t + torch.tensor([[4.0], [-2.0], [0.0]], dtype=torch.float64), 0.0)
    tt = torch.where(ranks > 0, t, 0.0)
    assert margin_mse(same, ranks, tt, reduction="sum").abs() < 1e-20
    assert margin_mse(same, ranks, tt, margins="all_pairs", reduction="sum").abs() < 1e-20
    assert kl_distill(same, ranks, tt, reduction="sum").abs() < 1e-12
    # Margin-MSE tolerates a different teacher origin; KL is not invariant to the teacher's *scale*
    assert kl_distill(same, ranks, tt * 2, reduction="sum") > 1e-3


def test_margin_mse_equals_sentence_transformers_cross_encoder_margin_mse():
    """Peer: sentence-transformers' CrossEncoder MarginMSELoss (forward run as shipped; only the
    cross-encoder's scoring of (query, doc) pairs is replaced by a table of student scores)."""
    st = pytest.importorskip("sentence_transformers.cross_encoder.losses")
    B, n_neg = 4, 3
    g = torch.Generator().manual_seed(5)
    s = torch.randn(B, 1 + n_neg, generator=g)
    t = torch.randn(B, 1 + n_neg, generator=g) * 4
    table = {(f"q{b}", f"d{b}_{i}"): s[b, i] for b in range(B) for i in range(1 + n_neg)}
    peer = st.MarginMSELoss.__new__(st.MarginMSELoss)
    torch.nn.Module.__init__(peer)
    peer.loss_fct, peer.activation_fn = torch.nn.MSELoss(), torch.nn.Identity()
    peer.logits_from_pairs = lambda pairs, **kw: torch.stack([table[p] for p in pairs])
    inputs = [[f"q{b}" for b in range(B)]] + [[f"d{b}_{i}" for b in range(B)] for i in range(1 + n_neg)]
    want = peer.forward(inputs, t)  # labels [B, 1 + n_neg]: the positive's score first
    # lrt: the positive is the teacher's rank-1 candidate; put it at a different position per list
    perm = torch.stack([torch.roll(torch.arange(1 + n_neg), b) for b in range(B)])
    ranks = torch.empty(B, 1 + n_neg, dtype=torch.long)
    for b in range(B):
        ranks[b, perm[b]] = torch.tensor([1, 2, 3, 4])
    got = margin_mse(s.gather(1, perm.argsort(1)), ranks, t.gather(1, perm.argsort(1)))
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_fp32_under_autocast_and_registry_params():
    s, ranks, t = _lists(4)
    x = torch.where(ranks > 0, s, 0.0).to(torch.bfloat16)
    for name in TEACHER_SCORE_LOSSES:
        fn = get_ranking_loss(name)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = fn(x, ranks, t.float(), reduction="none")
        assert out.dtype == torch.float32
    with pytest.raises(ValueError, match=r"params.temperature: temperature=0 must be a finite number > 0"):
        check_loss_params("kl_distill", {"temperature": 0})
    with pytest.raises(ValueError, match=r"Did you mean 'all_pairs'"):
        check_loss_params("margin_mse", {"margins": "allpairs"})
    with pytest.raises(ValueError, match=r"has no parameter 'tau'"):
        check_loss_params("kl_distill", {"tau": 2.0})
    with pytest.raises(ValueError, match="needs teacher_scores"):
        margin_mse(s, ranks, None)
