"""Benchmark: vectorised ranking losses vs naive Python-loop references (forward + backward).

Why: the losses sit in the inner training loop; a per-pair Python loop over B x N(N-1)/2 pairs
would cost seconds per step. Acceptance: every loss >= 10x faster than its loop reference.

The loop references below are the ones tests/test_losses_ranking.py trusts and imports (one list
at a time, explicit loops over pairs/positions, autograd through scalar tensor ops): one copy,
shipped here so `lrt bench losses` runs from an installed package.
Both sides run in this process, on the same inputs, fp32, CPU.

    lrt bench losses [--b 32] [--n 100] [--reps 10] [--threads 1]

Prints one JSON line per loss, then a summary table; exits 1 if any ratio is < 10 or the
two sides disagree (relative difference of the summed loss >= 1e-4).
"""
from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

from lrt.losses import RANKING_LOSSES

# ----------------------------------------------------------------------------- loop references

def _valid(r: list[int]) -> list[int]:
    return [i for i, x in enumerate(r) if x > 0]


def ref_gains(r: list[int], rel: list[float] | None, gain: str) -> dict[int, float]:
    """Gain of each valid candidate, from the definitions in the loss docstrings."""
    idx = _valid(r)
    n = len(idx)
    if rel is not None:
        top = max(rel[i] for i in idx)
        table = {
            "linear": lambda i: rel[i],
            "exp": lambda i: 2.0 ** rel[i] - 1.0,
            "exp_safe": lambda i: (2.0 ** rel[i] - 1.0) / 2.0**top,
        }
    else:
        table = {
            "linear": lambda i: n + 1.0 - r[i],
            "inverse": lambda i: 1.0 / r[i],
            "exp_safe": lambda i: (2.0 ** (n - r[i]) - 1.0) / 2.0 ** (n - 1),
        }
    return {i: table[gain](i) for i in idx}


def ref_ndcg(order: list[int], g: dict[int, float], k: int | None = None) -> float:
    """NDCG@k of a ranking `order` (best first) with gains g (Järvelin–Kekäläinen, log2)."""
    cut = len(order) if k is None else k
    dcg = sum(g[i] / math.log2(p + 2) for p, i in enumerate(order[:cut]))
    ideal = sorted(g.values(), reverse=True)[:cut]
    idcg = sum(v / math.log2(p + 2) for p, v in enumerate(ideal))
    return dcg / idcg


def ref_ranknet(s, r, rel=None, weighting="first", reduction_pairs="pairs", sigma=1.0, use_relevance=False, gain="linear"):
    """FIRST eq.: (1/P) Σ_{r_i<r_j} w_ij log(1 + exp(−σ(s_i − s_j))), or / Σw."""
    idx = _valid(r)
    g = ref_gains(r, rel, gain) if weighting == "label_diff" else {}
    num, den = s.new_zeros(()), 0.0
    for i in idx:
        for j in idx:
            if not (rel[i] > rel[j] if use_relevance else r[i] < r[j]):
                continue
            if weighting == "none":
                w = 1.0
            elif weighting == "first":
                w = 1.0 / (r[i] + r[j])
            elif weighting == "inverse_sum":
                w = 1.0 / r[i] + 1.0 / r[j]
            else:
                w = abs(g[i] - g[j])
            num = num + w * torch.log(1 + torch.exp(-sigma * (s[i] - s[j])))
            den += 1.0 if reduction_pairs == "pairs" else w
    return num / den if den > 0 else num


def _predicted_order(s, idx: list[int]) -> list[int]:
    return sorted(idx, key=lambda i: -float(s[i].detach()))


def ref_lambdaloss(s, r, rel=None, scheme="ndcg_loss2pp", k=None, sigma=1.0, mu=10.0, gain="linear"):
    """Wang et al. CIKM'18: −Σ log2 σ(σ(s_i − s_j))^{w_ij}, positions from the current scores."""
    idx = _valid(r)
    g = ref_gains(r, rel, gain)
    pos = {i: p + 1 for p, i in enumerate(_predicted_order(s, idx))}
    ideal = sorted(g.values(), reverse=True)
    cut = len(idx) if k is None else k
    max_dcg = sum(v / math.log2(1 + p + 1) for p, v in enumerate(ideal[:cut]))
    big_g = {i: g[i] / max_dcg for i in idx}

    def inv_d(p: int) -> float:  # 1/D(p), truncated at k
        return 1.0 / math.log2(1 + p) if p <= cut else 0.0

    loss = s.new_zeros(())
    for i in idx:
        for j in idx:
            if i == j or min(pos[i], pos[j]) > cut:
                continue
            if scheme == "ndcg_loss1":
                w = big_g[i] * inv_d(pos[i])
            else:
                if not (rel[i] > rel[j] if rel is not None else r[i] < r[j]):
                    continue
                gap = abs(pos[i] - pos[j])
                delta = abs(1.0 / math.log2(1 + gap) - 1.0 / math.log2(2 + gap))
                lam = abs(big_g[i] - big_g[j]) * abs(inv_d(pos[i]) - inv_d(pos[j]))
                w = {
                    "lambdarank": lam,
                    "ndcg_loss2": delta * abs(big_g[i] - big_g[j]),
                    "ndcg_loss2pp": mu * delta * abs(big_g[i] - big_g[j]) + lam,
                }[scheme]
            loss = loss - torch.log2(torch.sigmoid(sigma * (s[i] - s[j])) ** w)
    return loss


def ref_plackett_luce(s, perm: list[int]):
    """P_PL(π | s) = Π_k exp(s_π(k)) / Σ_{l≥k} exp(s_π(l))."""
    p = s.new_ones(())
    for k in range(len(perm)):
        p = p * torch.exp(s[perm[k]]) / sum(torch.exp(s[perm[m]]) for m in range(k, len(perm)))
    return p


def ref_listmle(s, r, rel=None, top_k=None, alpha=None):
    """Σ_k α(k) [log Σ_{l≥k} exp s_π*(l) − s_π*(k)]: one backward loop over teacher positions
    with a running tail sum Σ_{l≥k} exp s_π*(l)."""
    perm = sorted(_valid(r), key=lambda i: r[i])
    loss, tail = s.new_zeros(()), s.new_zeros(())
    for k in reversed(range(len(perm))):
        tail = tail + torch.exp(s[perm[k]])
        if top_k is not None and k + 1 > top_k:
            continue
        if alpha is None:
            a = 1.0
        else:
            a = 1.0 / math.log2(k + 2) + (1.0 if alpha == "one_plus_inv_log2" else 0.0)
        loss = loss + a * (torch.log(tail) - s[perm[k]])
    return loss


def ref_listnet(s, r, rel=None, temperature=1.0, target="ranks"):
    idx = _valid(r)
    t = {i: (-r[i] if target == "ranks" else rel[i]) / temperature for i in idx}
    zt = sum(math.exp(v) for v in t.values())
    zs = sum(torch.exp(s[i]) for i in idx)
    loss = s.new_zeros(())
    for i in idx:
        loss = loss - math.exp(t[i]) / zt * torch.log(torch.exp(s[i]) / zs)
    return loss


def ref_approxndcg(s, r, rel=None, temperature=1.0, gain="linear"):
    """Qin et al. 2010: π̂_i = 1 + Σ_{j≠i} σ((s_j − s_i)/T), loss = 1 − Σ g_i/log2(1+π̂_i) / maxDCG."""
    idx = _valid(r)
    g = ref_gains(r, rel, gain)
    ideal = sorted(g.values(), reverse=True)
    max_dcg = sum(v / math.log2(p + 2) for p, v in enumerate(ideal))
    dcg = s.new_zeros(())
    for i in idx:
        approx_rank = 1.0 + sum(torch.sigmoid((s[j] - s[i]) / temperature) for j in idx if j != i)
        dcg = dcg + g[i] / torch.log2(1.0 + approx_rank)
    return 1.0 - dcg / max_dcg


def ref_softmax_ce(s, r, rel=None):
    idx = _valid(r)
    top = next(i for i in idx if r[i] == 1)
    return -torch.log(torch.exp(s[top]) / sum(torch.exp(s[i]) for i in idx))


def ref_lipo(s, r, rel=None, gain="linear"):
    """LiPO-λ: −Σ_{ψ_i>ψ_j} Δ_ij log σ(s_i − s_j), Δ = |G_i − G_j|·|1/D(τ_i) − 1/D(τ_j)|."""
    idx = _valid(r)
    g = ref_gains(r, rel, gain)
    tau = {i: p + 1 for p, i in enumerate(_predicted_order(s, idx))}
    max_dcg = sum(v / math.log2(p + 2) for p, v in enumerate(sorted(g.values(), reverse=True)))
    loss = s.new_zeros(())
    for i in idx:
        for j in idx:
            if rel[i] > rel[j] if rel is not None else r[i] < r[j]:
                delta = abs(g[i] - g[j]) / max_dcg * abs(1 / math.log2(1 + tau[i]) - 1 / math.log2(1 + tau[j]))
                loss = loss - delta * torch.log(torch.sigmoid(s[i] - s[j]))
    return loss


def ref_bce(s, r, rel=None, use_relevance=True, top_k=1):
    """Pointwise BCE: mean over valid i of −[t_i log σ(s_i) + (1 − t_i) log(1 − σ(s_i))], t_i = y_i / max y
    (graded relevance) or 1 for the teacher's top_k."""
    idx = _valid(r)
    if use_relevance and rel is not None:
        top = max(rel[i] for i in idx)
        t = {i: (rel[i] / top if top > 0 else 0.0) for i in idx}
    else:
        t = {i: 1.0 if r[i] <= (top_k or 1) else 0.0 for i in idx}
    loss = s.new_zeros(())
    for i in idx:
        p = torch.sigmoid(s[i])
        loss = loss - (t[i] * torch.log(p) + (1 - t[i]) * torch.log(1 - p))
    return loss / len(idx)


def ref_pg_rank(s, r, rel=None, samples=8, temperature=1.0, k=10, reward="ndcg", labels="auto", gain="linear",
                baseline="loo", entropy=0.0, rbo_p=0.9):
    """PG-Rank, one sampled ranking at a time: the same Gumbel draws (the list's label seed), then the
    PL log-prob, nDCG@k (+ 0.2 Recall@k + 0.1 RBO), leave-one-out baseline and surrogate by loops."""
    from lrt.losses.pg_rank import gumbel_noise, label_seed

    idx = _valid(r)
    y = None if labels == "ranks" else rel
    g = ref_gains(r, y, gain)
    seed = label_seed(torch.tensor([r[i] for i in idx]), None if y is None else torch.tensor([y[i] for i in idx]))
    noise = gumbel_noise(seed, samples, len(idx)).tolist()
    teacher = sorted(idx, key=lambda i: r[i])
    us, logps = [], []
    for kk in range(samples):
        key = {i: float(s[i]) / temperature + noise[kk][j] for j, i in enumerate(idx)}
        order = sorted(idx, key=lambda i: -key[i])
        logp = s.new_zeros(())
        for j in range(len(order)):
            logp = logp + s[order[j]] / temperature - torch.logsumexp(torch.stack([s[i] for i in order[j:]]) / temperature, 0)
        u = ref_ndcg(order, g, k)
        if reward == "reasonrank":
            cut = k or len(order)
            relevant = {i for i in idx if (y[i] > 0 if y is not None else r[i] <= cut)}
            recall = len(relevant & set(order[:cut])) / len(relevant) if relevant else 0.0
            agree = [len(set(order[:d]) & set(teacher[:d])) / d for d in range(1, len(order) + 1)]
            rbo = (1 - rbo_p) * sum(rbo_p ** (d - 1) * a for d, a in enumerate(agree, 1)) + rbo_p ** len(order)
            u = u + 0.2 * recall + 0.1 * rbo
        us.append(u - entropy * float(logp))
        logps.append(logp)
    plain = [u + entropy * float(lp) for u, lp in zip(us, logps)]
    surrogate = s.new_zeros(())
    for kk in range(samples):
        b = (sum(us) - us[kk]) / (samples - 1) if baseline == "loo" else 0.0
        surrogate = surrogate - (us[kk] - b) * logps[kk] / samples
    return (1.0 - sum(plain) / samples) + surrogate - surrogate.detach()


REFS = {
    "ranknet": ref_ranknet,
    "lambdaloss": ref_lambdaloss,
    "listnet": ref_listnet,
    "listmle": ref_listmle,
    "approxndcg": ref_approxndcg,
    "softmax_ce": ref_softmax_ce,
    "lipo_lambda": ref_lipo,
    "bce": ref_bce,
    "pg_rank": ref_pg_rank,
}


def ref_batch(name: str, scores, ranks, relevance=None, **params):
    """Per-list reference losses [B] (0 for lists with < 2 valid candidates)."""
    out = []
    for b in range(scores.shape[0]):
        r = ranks[b].tolist()
        rel = None if relevance is None else relevance[b].tolist()
        if len(_valid(r)) < 2:
            out.append(scores.new_zeros(()))
        else:
            out.append(REFS[name](scores[b], r, rel, **params))
    return torch.stack(out)


# ----------------------------------------------------------------------------- fixtures


# ----------------------------------------------------------------------------- benchmark

def _fwd_bwd(fn: Callable[[torch.Tensor], torch.Tensor], scores: torch.Tensor) -> tuple[float, float]:
    """(seconds for forward + backward, loss value)."""
    x = scores.detach().clone().requires_grad_(True)
    start = time.perf_counter()
    loss = fn(x).sum()
    loss.backward()
    return time.perf_counter() - start, loss.item()


def _median_run(fn: Callable[[torch.Tensor], torch.Tensor], scores: torch.Tensor, reps: int) -> tuple[float, float]:
    runs = [_fwd_bwd(fn, scores) for _ in range(reps)]
    return statistics.median(t for t, _ in runs), runs[-1][1]


@dataclass
class Options:
    """`lrt bench losses` flags (`lrt.cli.bench.losses`)."""

    b: int = 32  # lists
    n: int = 100  # candidates per list
    reps: int = 10  # timed repetitions of the vectorised loss (median)
    loop_reps: int = 1  # repetitions of the loop reference (median)
    threads: int = 1  # torch threads (shared machine: default 1)


def run(args: Options) -> int:
    """Time every ranking loss against its loop reference; 1 if one is < 10x faster or they disagree."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    b, n = args.b, args.n
    scores = torch.randn(b, n)
    ranks = torch.argsort(torch.rand(b, n), dim=-1) + 1  # a random strict permutation per list
    rows: list[dict] = []
    t_ranknet = 0.0
    for name, fn in RANKING_LOSSES.items():
        fast = lambda x, fn=fn: fn(x, ranks, None, reduction="sum")  # noqa: E731
        slow = lambda x, name=name: ref_batch(name, x, ranks)  # noqa: E731
        _median_run(fast, scores, 2)  # warm-up (allocator, dispatch caches)
        t_fast, v_fast = _median_run(fast, scores, args.reps)
        t_slow, v_slow = _median_run(slow, scores, args.loop_reps)
        # same numbers on both sides, or the comparison is meaningless
        rel_diff = abs(v_fast - v_slow) / max(abs(v_slow), 1e-12)
        row = {
            "loss": name,
            "B": b,
            "N": n,
            "vectorised_ms": round(t_fast * 1e3, 3),
            "loop_ms": round(t_slow * 1e3, 1),
            "speedup": round(t_slow / t_fast, 1),
            "loss_value": round(v_fast, 6),
            "rel_diff_vs_loop": float(f"{rel_diff:.2e}"),
            "threads": args.threads,
        }
        if name == "ranknet":  # first in the registry: every loss's time is also given relative to it
            t_ranknet = t_fast
        row["vs_ranknet"] = round(t_fast / t_ranknet, 2)
        rows.append(row)
        print(json.dumps(row), flush=True)

    print(f"\n{'loss':<12} {'vectorised ms':>14} {'x ranknet':>10} {'loop ms':>10} {'speedup':>9}  ok")
    for r in rows:
        ok = r["speedup"] >= 10
        print(f"{r['loss']:<12} {r['vectorised_ms']:>14.3f} {r['vs_ranknet']:>10.2f} {r['loop_ms']:>10.1f} "
              f"{r['speedup']:>8.1f}x  {'yes' if ok else 'NO'}")
    return 0 if all(r["speedup"] >= 10 and r["rel_diff_vs_loop"] < 1e-4 for r in rows) else 1
