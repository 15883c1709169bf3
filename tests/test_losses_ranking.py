"""Tests for lrt.losses ranking losses against references written from the papers' definitions.

The `ref_*` functions are deliberately naive: one list at a time, explicit loops over pairs or
positions, formulas as printed in the papers (RankNet / FIRST, Wang et al. CIKM'18, Plackett–Luce,
Qin et al. 2010, LiPO). They take a 1-D score tensor (autograd works through them) and Python
lists of ranks / relevance. They live in lrt/bench/losses.py (one copy: `lrt bench losses` uses them as
the loop baseline from an installed package) and are imported here.
"""
from __future__ import annotations

import itertools
import math

import pytest
import torch

# the loop references: one copy, shipped in lrt/bench/losses.py (`lrt bench losses` times the losses against them)
from lrt.bench.losses import _predicted_order, _valid, ref_batch, ref_gains, ref_lipo, ref_ndcg, ref_plackett_luce
from lrt.losses import (
    RANKING_LOSSES,
    approxndcg,
    get_ranking_loss,
    lambda_weights,
    lambdaloss,
    lipo_lambda,
    lipo_scores,
    listmle,
    listnet,
    ranknet,
    softmax_ce,
)

# ----------------------------------------------------------------------------- fixtures


def make_batch(b=3, n=6, n_valid=(6, 4, 2), dtype=torch.float64, seed=0, relevance=False):
    """Random lists with padding at random positions and a strict permutation over valid ones."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(b, n, generator=g, dtype=dtype) * 2
    ranks = torch.zeros(b, n, dtype=torch.long)
    for i in range(b):
        slots = torch.randperm(n, generator=g)[: n_valid[i]]
        ranks[i, slots] = torch.randperm(n_valid[i], generator=g) + 1
    rel = torch.randint(0, 4, (b, n), generator=g).to(dtype) if relevance else None
    return scores, ranks, rel


# (name, params, pass relevance?)
CONFIGS = [
    ("ranknet", {}, False),
    ("ranknet", {"weighting": "none", "reduction_pairs": "weights", "sigma": 2.0}, False),
    ("ranknet", {"weighting": "label_diff", "use_relevance": True, "gain": "exp"}, True),
    ("ranknet", {"weighting": "inverse_sum"}, True),
    ("lambdaloss", {}, False),
    ("lambdaloss", {"scheme": "lambdarank", "k": 3}, False),
    ("lambdaloss", {"scheme": "ndcg_loss1", "gain": "inverse"}, False),
    ("lambdaloss", {"scheme": "ndcg_loss2", "gain": "exp_safe", "sigma": 0.5}, True),
    ("lambdaloss", {"scheme": "ndcg_loss2pp", "k": 2, "mu": 5.0, "gain": "exp"}, True),
    ("listnet", {}, False),
    ("listnet", {"target": "relevance", "temperature": 0.5}, True),
    ("listmle", {}, False),
    ("listmle", {"top_k": 3, "alpha": "inv_log2"}, False),
    ("listmle", {"alpha": "one_plus_inv_log2"}, False),
    ("approxndcg", {}, False),
    ("approxndcg", {"temperature": 0.5, "gain": "exp"}, True),
    ("softmax_ce", {}, False),
    ("lipo_lambda", {}, False),
    ("lipo_lambda", {"gain": "exp"}, True),
]
IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in p.items()) or 'default'}" for n, p, _ in CONFIGS]


def _call(name, params, scores, ranks, rel, **kw):
    return RANKING_LOSSES[name](scores, ranks, rel, **params, **kw)


# ----------------------------------------------------------------------------- references


@pytest.mark.parametrize(("name", "params", "use_rel"), CONFIGS, ids=IDS)
def test_matches_loop_reference(name, params, use_rel):
    torch.manual_seed(0)
    scores, ranks, rel = make_batch(relevance=use_rel)
    if use_rel:  # relevance-based pair sets need at least one strict pair; make sure labels vary
        rel[:, 0] = 3.0
    got = _call(name, params, scores, ranks, rel, reduction="none")
    want = ref_batch(name, scores, ranks, rel, **params)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("weighting", ["none", "first", "inverse_sum", "label_diff"])
@pytest.mark.parametrize("reduction_pairs", ["pairs", "weights"])
@pytest.mark.parametrize("use_relevance", [False, True])
def test_ranknet_every_weighting_matches_double_loop(weighting, reduction_pairs, use_relevance):
    torch.manual_seed(1)
    scores, ranks, rel = make_batch(seed=1, relevance=True)
    params = dict(weighting=weighting, reduction_pairs=reduction_pairs, use_relevance=use_relevance)
    got = ranknet(scores, ranks, rel if use_relevance else None, reduction="none", **params)
    want = ref_batch("ranknet", scores, ranks, rel if use_relevance else None, **params)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_ranknet_first_defaults_divide_by_all_pairs():
    # FIRST: P = n(n-1)/2 pairs, w = 1/(r_i + r_j); check one hand-computed list of 3.
    s = torch.tensor([[0.0, 1.0, 2.0]], dtype=torch.float64)
    r = torch.tensor([[1, 2, 3]])
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731
    want = (sp(1.0) / 3 + sp(2.0) / 4 + sp(1.0) / 5) / 3
    assert ranknet(s, r).item() == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("k", [None, 1, 3])
@pytest.mark.parametrize("use_rel", [False, True])
def test_lambdarank_weights_equal_swap_delta_ndcg(k, use_rel):
    torch.manual_seed(2)
    scores, ranks, rel = make_batch(b=2, n=6, n_valid=(6, 5), seed=2, relevance=use_rel)
    w = lambda_weights(scores, ranks, rel, scheme="lambdarank", k=k, gain="linear")
    for b in range(2):
        r = ranks[b].tolist()
        relb = rel[b].tolist() if use_rel else None
        g = ref_gains(r, relb, "linear")
        order = _predicted_order(scores[b], _valid(r))
        base = ref_ndcg(order, g, k)
        for i in _valid(r):
            for j in _valid(r):
                is_pair = relb[i] > relb[j] if use_rel else r[i] < r[j]
                swapped = list(order)
                a, c = swapped.index(i), swapped.index(j)
                swapped[a], swapped[c] = j, i
                want = abs(ref_ndcg(swapped, g, k) - base) if is_pair else 0.0
                assert w[b, i, j].item() == pytest.approx(want, abs=1e-12), (b, i, j)


def test_ndcg_loss2_delta_uses_paper_discount():
    # |ρ_i − ρ_j| = 1 must give δ = 1/log2(2) − 1/log2(3) (pytorchltr uses log2(3), log2(4)).
    s = torch.tensor([[2.0, 1.0]], dtype=torch.float64)
    r = torch.tensor([[1, 2]])
    w = lambda_weights(s, r, scheme="ndcg_loss2", gain="linear")
    max_dcg = 2.0 + 1.0 / math.log2(3)
    assert w[0, 0, 1].item() == pytest.approx((1 - 1 / math.log2(3)) * (1.0 / max_dcg), rel=1e-12)


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6])
def test_listmle_is_plackett_luce_nll(n):
    torch.manual_seed(n)
    s = torch.randn(n, dtype=torch.float64)
    ranks = torch.randperm(n) + 1
    total = sum(ref_plackett_luce(s, list(p)) for p in itertools.permutations(range(n)))
    assert total.item() == pytest.approx(1.0, abs=1e-12)
    teacher = sorted(range(n), key=lambda i: ranks[i].item())
    want = -torch.log(ref_plackett_luce(s, teacher))
    assert listmle(s[None], ranks[None]).item() == pytest.approx(want.item(), rel=1e-10)


def test_approxndcg_tends_to_exact_ndcg():
    torch.manual_seed(3)
    # well-separated scores: gaps >= 0.05, so σ(gap/T) saturates at T = 1e-4
    s = (torch.randperm(6).to(torch.float64) * 0.05)[None]
    ranks = (torch.randperm(6) + 1)[None]
    rel = torch.tensor([[3.0, 0.0, 1.0, 2.0, 0.0, 1.0]], dtype=torch.float64)
    for r_, g_name in ((None, "linear"), (rel, "exp")):
        g = ref_gains(ranks[0].tolist(), None if r_ is None else r_[0].tolist(), g_name)
        exact = ref_ndcg(_predicted_order(s[0], list(range(6))), g)
        loose = 1 - approxndcg(s, ranks, r_, temperature=1.0, gain=g_name).item()
        tight = 1 - approxndcg(s, ranks, r_, temperature=1e-4, gain=g_name).item()
        assert abs(tight - exact) < 1e-9 < abs(loose - exact)


def test_lipo_reduces_to_stated_form_and_dpo():
    torch.manual_seed(4)
    policy = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    ref = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    ranks = torch.stack([torch.randperm(5) + 1 for _ in range(2)])
    for beta in (0.01, 0.1, 1.0):
        s = lipo_scores(policy, ref, beta)
        got = lipo_lambda(s, ranks, reduction="none")
        want = torch.stack([ref_lipo(beta * (policy[b] - ref[b]), ranks[b].tolist()) for b in range(2)])
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    # K = 2: Δ · DPO loss −log σ(β[(logπ_w − logπ_ref,w) − (logπ_l − logπ_ref,l)]).
    pw, pl, rw, rl, beta = 0.3, -0.4, 0.1, 0.2, 0.5
    s = lipo_scores(torch.tensor([[pl, pw]]), torch.tensor([[rl, rw]]), beta)
    dpo = -math.log(1 / (1 + math.exp(-beta * ((pw - rw) - (pl - rl)))))
    delta = (1.0 / (2.0 + 1.0 / math.log2(3))) * (1.0 - 1.0 / math.log2(3))
    assert lipo_lambda(s, torch.tensor([[2, 1]])).item() == pytest.approx(delta * dpo, rel=1e-6)


def test_lipo_no_gradient_into_reference():
    torch.manual_seed(5)
    policy = torch.randn(2, 4, requires_grad=True)
    ref = torch.randn(2, 4, requires_grad=True)
    ranks = torch.tensor([[1, 2, 3, 4], [2, 1, 0, 3]])
    lipo_lambda(lipo_scores(policy, ref, 0.1), ranks).backward()
    assert ref.grad is None and policy.grad is not None and policy.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        lipo_scores(policy, ref, 0.0)


def test_allrank_published_constants():
    # allRank tests: y_pred = [0.5, 0.3, 0.5], y_true = [0.5, 0.3, 0.5] (exp gain 2^y − 1).
    s = torch.tensor([[0.5, 0.3, 0.5]], dtype=torch.float64)
    rel = torch.tensor([[0.5, 0.3, 0.5]], dtype=torch.float64)
    r = torch.tensor([[1, 3, 2]])
    assert lambdaloss(s, r, rel, scheme="ndcg_loss2pp", gain="exp").item() == pytest.approx(1.1244146823)
    # RankNet scheme = Σ over the 2 pairs with natural log; ours is the per-pair mean.
    got = ranknet(s, r, rel, weighting="none", use_relevance=True).item() * 2
    assert got == pytest.approx(1.1962778568)
    # allRank ApproxNDCG (α = 1) returns −ApproxNDCG; ours is 1 − ApproxNDCG.
    assert approxndcg(s, r, rel, temperature=1.0, gain="exp").item() == pytest.approx(1 - 0.8499219417)
    # allRank NDCG-Loss1 also sums the j = i terms, each −log2 σ(0)^{G_i/D_i} = G_i/D_i.
    g = {i: 2 ** rel[0, i].item() - 1 for i in range(3)}
    current = ref_ndcg([0, 2, 1], g)
    assert lambdaloss(s, r, rel, scheme="ndcg_loss1", gain="exp").item() + current == pytest.approx(2.9272110462)
    # allRank ListMLE: y_pred = [0.5, 0.3, pad], y_true = [1, 0, pad].
    assert listmle(torch.tensor([[0.5, 0.3, 0.5]]), torch.tensor([[1, 2, 0]])).item() == pytest.approx(0.5981389)


# ----------------------------------------------------------------------------- invariances


@pytest.mark.parametrize(("name", "params", "use_rel"), CONFIGS, ids=IDS)
def test_padding_and_permutation_invariance(name, params, use_rel):
    torch.manual_seed(6)
    scores, ranks, rel = make_batch(b=3, n=5, n_valid=(5, 3, 2), seed=6, relevance=use_rel)
    if use_rel:
        rel[:, 0] = 3.0
    base = _call(name, params, scores, ranks, rel, reduction="none")
    # padded candidates with absurd scores, inserted between the real ones
    junk = torch.tensor([1e30, -1e30, float("inf"), float("nan")], dtype=scores.dtype).expand(3, 4)
    padded_scores = torch.cat([junk[:, :2], scores, junk[:, 2:]], dim=1).clone().requires_grad_(True)
    padded_ranks = torch.cat([torch.zeros(3, 2, dtype=torch.long), ranks, -torch.ones(3, 2, dtype=torch.long)], 1)
    padded_rel = None if rel is None else torch.cat([torch.full((3, 2), 9.0), rel, torch.full((3, 2), -1.0)], 1)
    out = _call(name, params, padded_scores, padded_ranks, padded_rel, reduction="none")
    torch.testing.assert_close(out, base, rtol=1e-12, atol=1e-12)
    out.sum().backward()
    assert torch.all(padded_scores.grad[:, :2] == 0) and torch.all(padded_scores.grad[:, -2:] == 0)
    # joint permutation of candidates, ranks and relevance
    perm = torch.randperm(5)
    out = _call(name, params, scores[:, perm], ranks[:, perm], None if rel is None else rel[:, perm], reduction="none")
    torch.testing.assert_close(out, base, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- numerics


@pytest.mark.parametrize(("name", "params", "use_rel"), CONFIGS, ids=IDS)
def test_gradcheck_float64(name, params, use_rel):
    torch.manual_seed(7)
    scores, ranks, rel = make_batch(b=2, n=4, n_valid=(4, 3), seed=7, relevance=use_rel)
    if use_rel:
        rel[:, 0] = 3.0
    scores.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: _call(name, params, x, ranks, rel, reduction="none"), (scores,))


@pytest.mark.parametrize(("name", "params", "use_rel"), CONFIGS, ids=IDS)
def test_bf16_and_all_padding_rows_are_finite(name, params, use_rel):
    torch.manual_seed(8)
    scores, ranks, rel = make_batch(b=4, n=5, n_valid=(5, 1, 0, 3), seed=8, dtype=torch.float32, relevance=use_rel)
    scores = (scores * 20).to(torch.bfloat16).requires_grad_(True)  # large logit gaps
    loss = _call(name, params, scores, ranks, rel)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(scores.grad.float()).all()
    per_list = _call(name, params, scores, ranks, rel, reduction="none")
    assert per_list[1].item() == 0.0 and per_list[2].item() == 0.0
    # a batch of nothing but padding
    empty = torch.zeros(2, 3, dtype=torch.bfloat16, requires_grad=True)
    zero_ranks = torch.zeros(2, 3, dtype=torch.long)
    out = _call(name, params, empty, zero_ranks, None if rel is None else torch.zeros(2, 3))
    out.backward()
    assert out.item() == 0.0 and torch.all(empty.grad == 0)


@pytest.mark.parametrize(("name", "params", "use_rel"), CONFIGS, ids=IDS)
def test_reductions(name, params, use_rel):
    torch.manual_seed(9)
    scores, ranks, rel = make_batch(b=3, n=5, n_valid=(5, 4, 1), seed=9, dtype=torch.float32, relevance=use_rel)
    if use_rel:
        rel[:, 0] = 3.0
    none = _call(name, params, scores, ranks, rel, reduction="none")
    mean = _call(name, params, scores, ranks, rel, reduction="mean")
    total = _call(name, params, scores, ranks, rel, reduction="sum")
    assert none.shape == (3,)
    torch.testing.assert_close(total, mean * 3, rtol=1e-6, atol=0)
    torch.testing.assert_close(total, none.sum())
    assert none[2].item() == 0.0  # single valid candidate


def test_fp64_stays_fp64_and_fp16_upcasts():
    scores, ranks, _ = make_batch()
    assert listmle(scores, ranks).dtype == torch.float64
    assert listmle(scores.half(), ranks).dtype == torch.float32


def test_huge_score_gaps_are_finite():
    s = torch.tensor([[1e4, -1e4, 0.0]], requires_grad=True)
    r = torch.tensor([[3, 1, 2]])  # badly wrong order with enormous margins
    for name in RANKING_LOSSES:
        loss = RANKING_LOSSES[name](s, r)
        (g,) = torch.autograd.grad(loss, s)
        assert torch.isfinite(loss) and torch.isfinite(g).all(), name


def test_bad_inputs_raise():
    s, r, _ = make_batch()
    with pytest.raises(ValueError):
        listnet(s, r, target="relevance")  # no relevance given
    with pytest.raises(ValueError):
        lambdaloss(s, r, gain="exp")  # 2^(n-r) overflows: refused for permutation labels
    with pytest.raises(ValueError):
        ranknet(s, r.float())
    with pytest.raises(ValueError):
        softmax_ce(s, r, reduction="avg")
    with pytest.raises(ValueError):
        listmle(s, r[:, :3])


def test_registry_resolves_every_loss():
    s, r, _ = make_batch(dtype=torch.float32)
    for name in RANKING_LOSSES:
        assert torch.isfinite(get_ranking_loss(name)(s, r, None))
