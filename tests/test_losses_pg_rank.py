"""pg_rank (Neural PG-Rank) against exact enumeration: on N <= 6 candidates every one of the N!
rankings is enumerated in float64, E[U] = sum_pi PL(pi | s/tau) U(pi) (+ beta H) is differentiated by
autograd, and the estimator's mean gradient over many independent lists must match it within
sampling error (z-test per coordinate on the measured standard error; the same check must reject a
gradient scaled by (K-1)/K, which is what a baseline that includes the sample itself gives)."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from lrt.losses.pg_rank import list_seeds, pg_rank, positions, rbo_reward, recall_reward, ndcg_reward
from lrt.losses._common import prepare
from lrt.losses.registry import get_ranking_loss

Z = 4.5  # per-coordinate z bound: with <= 6 coordinates x 4 cases a false alarm has p < 1e-4


# ---------------------------------------------------------------- brute-force references (one list)

def ref_gains(ranks: list[int], rel: list[float] | None, gain: str) -> dict[int, float]:
    idx = [i for i, r in enumerate(ranks) if r > 0]
    n = len(idx)
    if rel is not None:
        top = max(rel[i] for i in idx)
        f = {"linear": lambda i: rel[i], "exp_safe": lambda i: (2.0 ** rel[i] - 1.0) / 2.0 ** top}[gain]
    else:
        f = {"linear": lambda i: n + 1.0 - ranks[i],
             "exp_safe": lambda i: (2.0 ** (n - ranks[i]) - 1.0) / 2.0 ** (n - 1)}[gain]
    return {i: f(i) for i in idx}


def ref_ndcg(order: list[int], g: dict[int, float], k: int | None) -> float:
    cut = len(order) if k is None else k
    dcg = sum(g[i] / math.log2(p + 2) for p, i in enumerate(order[:cut]))
    idcg = sum(v / math.log2(p + 2) for p, v in enumerate(sorted(g.values(), reverse=True)[:cut]))
    return dcg / idcg if idcg > 0 else 0.0


def ref_recall(order: list[int], ranks: list[int], rel: list[float] | None, k: int) -> float:
    relevant = {i for i in order if (rel[i] > 0 if rel is not None else ranks[i] <= k)}
    return len(relevant & set(order[:k])) / len(relevant) if relevant else 0.0


def ref_rbo(order: list[int], teacher: list[int], p: float) -> float:
    """Webber et al.'s RBO_ext for two full rankings of the same n items."""
    n = len(order)
    a = [len(set(order[:d]) & set(teacher[:d])) / d for d in range(1, n + 1)]
    return (1 - p) * sum(p ** (d - 1) * a[d - 1] for d in range(1, n + 1)) + p ** n * a[-1]


def ref_reward(order, ranks, rel, reward, k, gain, rbo_p) -> float:
    g = ref_gains(ranks, rel, gain)
    u = ref_ndcg(order, g, k)
    if reward == "reasonrank":
        teacher = sorted(g, key=lambda i: ranks[i])
        u += 0.2 * ref_recall(order, ranks, rel, k or len(order)) + 0.1 * ref_rbo(order, teacher, rbo_p)
    return u


def exact_objective(s: torch.Tensor, ranks, rel, *, temperature, k, reward, gain, entropy, rbo_p) -> torch.Tensor:
    """sum over all n! orders of PL(pi | s/tau) (U(pi) - beta log PL(pi)), in float64."""
    idx = [i for i, r in enumerate(ranks) if r > 0]
    z = s / temperature
    total = s.new_zeros(())
    for perm in itertools.permutations(idx):
        logp = s.new_zeros(())
        for j in range(len(perm)):
            logp = logp + z[perm[j]] - torch.logsumexp(z[list(perm[j:])], 0)
        u = ref_reward(list(perm), ranks, rel, reward, k, gain, rbo_p)
        total = total + logp.exp() * (u - entropy * logp)
    return total


CASES = {
    "ndcg-ranks": dict(n=5, pad=0, rel=False, params=dict(samples=8, k=10, reward="ndcg")),
    "reasonrank-relevance-entropy": dict(n=6, pad=0, rel=True, params=dict(
        samples=6, k=3, reward="reasonrank", temperature=0.7, entropy=0.2, rbo_p=0.8)),
    "ndcg-padded-no-baseline": dict(n=4, pad=2, rel=False, params=dict(
        samples=4, k=None, baseline="none", gain="exp_safe", temperature=1.5)),
    "ndcg-relevance-k2": dict(n=5, pad=1, rel=True, params=dict(samples=3, k=2, labels="relevance")),
}


def _case(name: str):
    c = CASES[name]
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    n, pad = c["n"], c["pad"]
    s = torch.randn(n + pad, generator=g, dtype=torch.float64)
    ranks = torch.cat([torch.randperm(n, generator=g) + 1, torch.zeros(pad, dtype=torch.long)])
    rel = torch.cat([torch.randint(0, 3, (n,), generator=g).double(), torch.zeros(pad, dtype=torch.float64)]) \
        if c["rel"] else None
    if rel is not None and rel.max() == 0:
        rel[0] = 2.0
    return s, ranks, rel, c["params"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_mean_gradient_equals_the_exact_gradient_of_the_expected_reward(name):
    s, ranks, rel, params = _case(name)
    full = dict(temperature=1.0, k=10, reward="ndcg", gain="linear", entropy=0.0, rbo_p=0.9)
    full.update({k: v for k, v in params.items() if k in full})
    x = s.clone().requires_grad_(True)
    exact_u = exact_objective(x, ranks.tolist(), None if rel is None else rel.tolist(), **full)
    (exact,) = torch.autograd.grad(exact_u, x)

    M = 20000  # independent lists, each with its own seed: M i.i.d. draws of the K-sample estimator
    S = s.expand(M, -1).clone().requires_grad_(True)
    R = ranks.expand(M, -1)
    Y = None if rel is None else rel.expand(M, -1)
    loss = pg_rank(S, R, Y, list_seeds(7, 0, range(M)), reduction="none", **params)
    (g,) = torch.autograd.grad(loss.sum(), S)
    est = -g  # the loss descends; its negative gradient estimates the ascent direction of E[U]
    mean, se = est.mean(0), est.std(0) / math.sqrt(M)
    valid = ranks > 0
    assert torch.all(est[:, ~valid] == 0)  # padded candidates get no gradient
    assert float(se[valid].max()) < 0.1 * float(exact.abs().max()), "test has no power at this M"
    z = (mean - exact).abs() / se.clamp_min(1e-12)
    assert float(z[valid].max()) < Z, (mean, exact, se)
    # the same test rejects the (K-1)/K-scaled gradient of a baseline that includes the sample itself
    K = params["samples"]
    shrunk = (mean - exact * (K - 1) / K).abs() / se.clamp_min(1e-12)
    assert float(shrunk[valid].max()) > Z
    # and the reported value is 1 - the sampled mean reward: unbiased for 1 - E[U] (no entropy)
    if not full["entropy"]:
        v_se = float(loss.detach().std()) / math.sqrt(M)
        assert abs(float(loss.detach().mean()) - (1 - float(exact_u.detach()))) < Z * v_se


def test_vectorised_rewards_equal_the_brute_force_on_random_rankings():
    g = torch.Generator().manual_seed(3)
    B, N, K = 6, 7, 5
    s = torch.randn(B, N, dtype=torch.float64)
    ranks = torch.stack([torch.randperm(N, generator=g) + 1 for _ in range(B)])
    ranks[4, 5:] = 0
    ranks[4, :5] = torch.randperm(5, generator=g) + 1
    rel = torch.randint(0, 4, (B, N), generator=g).double()
    order = torch.stack([torch.stack([torch.randperm(N, generator=g) for _ in range(K)]) for _ in range(B)])
    order[4] = torch.stack([torch.cat([torch.randperm(5, generator=g), torch.tensor([5, 6])]) for _ in range(K)])
    for y in (None, rel):
        lists = prepare(s, ranks, y)
        pos = positions(order)
        nd, rc, rb = ndcg_reward(lists, pos, 3, "linear"), recall_reward(lists, pos, 3), rbo_reward(lists, pos, 0.8)
        for b in range(B):
            r = ranks[b].tolist()
            yy = None if y is None else y[b].tolist()
            valid = [i for i in range(N) if r[i] > 0]
            gmap = ref_gains(r, yy, "linear")
            teacher = sorted(valid, key=lambda i: r[i])
            for k in range(K):
                o = [i for i in order[b, k].tolist() if i in valid]
                assert float(nd[b, k]) == pytest.approx(ref_ndcg(o, gmap, 3), abs=1e-12)
                assert float(rc[b, k]) == pytest.approx(ref_recall(o, r, yy, 3), abs=1e-12)
                assert float(rb[b, k]) == pytest.approx(ref_rbo(o, teacher, 0.8), abs=1e-12)


def _batch(B=8, N=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(B, N, generator=g)
    ranks = torch.stack([torch.randperm(N, generator=g) + 1 for _ in range(B)])
    ranks[1, 4:] = 0  # a shorter list
    ranks[1, :4] = torch.randperm(4, generator=g) + 1
    return s, ranks


def test_deterministic_for_fixed_seeds_and_different_for_others():
    s, r = _batch()
    seeds = list_seeds(0, 5, range(8))
    out = []
    for _ in range(2):
        x = s.clone().requires_grad_(True)
        loss = pg_rank(x, r, None, seeds, reduction="sum", reward="reasonrank", entropy=0.1)
        loss.backward()
        out.append((loss.detach(), x.grad))
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])
    x = s.clone().requires_grad_(True)
    pg_rank(x, r, None, list_seeds(0, 6, range(8)), reduction="sum", reward="reasonrank", entropy=0.1).backward()
    assert not torch.equal(x.grad, out[0][1])  # the next step samples other rankings
    assert not torch.equal(list_seeds(0, 5, range(8)), list_seeds(1, 5, range(8)))  # the recipe seed matters


def test_one_list_at_a_time_equals_the_batch_and_padding_is_inert():
    """A list's draws depend on its seed alone: 1 x 8 and 8 x 1 see the same rankings."""
    s, r = _batch()
    seeds = list_seeds(3, 2, [11, 4, 7, 0, 23, 5, 9, 1])
    x = s.clone().requires_grad_(True)
    whole = pg_rank(x, r, None, seeds, reduction="none")
    whole.sum().backward()
    for b in range(8):
        xb = s[b:b + 1].clone().requires_grad_(True)
        wide = torch.cat([xb, torch.full((1, 3), 1e30)], 1)  # extra padded slots with absurd scores
        alone = pg_rank(wide, torch.cat([r[b:b + 1], torch.zeros(1, 3, dtype=torch.long)], 1), None, seeds[b:b + 1],
                        reduction="none")
        alone.sum().backward()
        torch.testing.assert_close(alone[0], whole[b], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(xb.grad[0], x.grad[b], rtol=1e-5, atol=1e-7)


def test_fp32_under_autocast_and_fp64_kept():
    s, r = _batch()
    loss = get_ranking_loss("pg_rank")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert loss(s.bfloat16(), r, None).dtype == torch.float32
    assert pg_rank(s.double(), r).dtype == torch.float64


def test_a_well_ranked_policy_has_full_reward():
    r = torch.tensor([[1, 2, 3, 4, 5]])
    s = -20.0 * r.float()  # PL(s) puts ~all mass on the teacher order
    assert float(pg_rank(s, r)) == pytest.approx(0.0, abs=1e-6)  # 1 - nDCG
    assert float(pg_rank(s, r, reward="reasonrank")) == pytest.approx(1.0 - 1.3, abs=1e-6)


@pytest.mark.parametrize("bad,match", [
    ({"samples": 1}, "samples=1 must be an int >= 2"),
    ({"reward": "ndgc"}, "Did you mean 'ndcg'"),
    ({"baseline": "mean"}, "baseline='mean' is not allowed"),
    ({"entropy": -0.1}, "entropy=-0.1 must be a finite number >= 0"),
    ({"rbo_p": 1.0}, r"rbo_p=1.0 must be a number in \(0, 1\)"),
    ({"labels": "qrels"}, "labels='qrels' is not allowed"),
])
def test_bad_params_fail_at_construction(bad, match):
    with pytest.raises(ValueError, match=match):
        get_ranking_loss("pg_rank", **bad)


def test_relevance_labels_need_relevance():
    s, r = _batch()
    with pytest.raises(ValueError, match="needs a relevance tensor"):
        pg_rank(s, r, labels="relevance")


@pytest.mark.parametrize("params", [{}, {"reward": "reasonrank", "k": 3, "entropy": 0.3, "temperature": 0.5},
                                    {"baseline": "none", "samples": 3, "gain": "exp_safe"}])
def test_value_and_gradient_equal_the_shipped_loop_reference(params):
    """lrt bench losses times pg_rank against this loop reference (one sampled ranking at a time)."""
    from lrt.bench.losses import ref_batch

    s, r = _batch(B=5, N=6, seed=4)
    s = s.double()
    x, y = s.clone().requires_grad_(True), s.clone().requires_grad_(True)
    fast = pg_rank(x, r, None, reduction="none", **params)
    slow = ref_batch("pg_rank", y, r, None, **params)
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-12)
    fast.sum().backward()
    slow.sum().backward()
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-10, atol=1e-12)
