"""Neural PG-Rank (Gao et al. 2023): the candidate scores of a list are a Plackett–Luce ranking policy,
trained by policy gradient on the downstream metric of rankings sampled from it.

One forward pass gives the scores s of a window (first-token identifier logits, or pointwise yes−no
scores of a group); K rankings per list are sampled from PL(s/τ) by Gumbel-top-k (sort s/τ + Gumbel
noise: an exact PL sample, no generated token); each is rewarded with nDCG@k against the teacher
ranks or graded relevance (or ReasonRank's nDCG@10 + 0.2·Recall@10 + 0.1·RBO), and

    surrogate = −(1/K) Σ_k (U_k − b_k) · log PL(π_k | s/τ),   b_k = mean_{j≠k} U_j (leave-one-out),

whose gradient is an unbiased estimate of −∇ E_π[U(π)] (REINFORCE; b_k does not depend on π_k).
The value reported is 1 − mean_k U_k (what a user wants to see go down); the gradient is the
surrogate's only.

Randomness: list b's noise comes from its own generator, seeded by `seeds[b]`. The trainer derives
it from (train.seed, optimizer step, the list's index in the training set) (`list_seeds`), so the
draws do not depend on how a global batch is cut into micro-batches and processes, and a resume
repeats them. Without seeds (a direct call) a list is seeded by its labels: still deterministic and
independent of the batch it sits in, but the same every call.
"""
from __future__ import annotations

import hashlib

import torch
from torch import Tensor

from lrt.losses._common import Lists, check_params, discount, gains, ideal_dcg, prepare, reduce

_PAD_GAP = 1.0e4  # as in listmle: padding far below every valid score, yet finite
_MASK64 = (1 << 64) - 1
_TAG = 0x50475F52414E4B  # "PG_RANK": these draws are independent of every other seeded stream
# ReasonRank's reward: nDCG@10 + 0.2 · Recall@10 + 0.1 · RBO (the paper's weights)
REASONRANK_WEIGHTS = (1.0, 0.2, 0.1)


def _splitmix(*parts: int) -> int:
    """A 63-bit seed from integers (splitmix64 chain): nearby inputs give unrelated seeds."""
    x = _TAG
    for p in parts:
        x = (x ^ (int(p) & _MASK64)) + 0x9E3779B97F4A7C15 & _MASK64
        x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & _MASK64
        x = (x ^ (x >> 27)) * 0x94D049BB133111EB & _MASK64
        x ^= x >> 31
    return x >> 1


def list_seeds(seed: int, step: int, indices: list[int] | Tensor) -> Tensor:
    """int64 [B]: the sampling seed of each list of an optimizer step, from (recipe seed, step, list
    index in the training set) only."""
    idx = indices.tolist() if isinstance(indices, Tensor) else list(indices)
    return torch.tensor([_splitmix(seed, step, i) for i in idx], dtype=torch.long)


def label_seed(ranks: Tensor, relevance: Tensor | None = None) -> int:
    """The seed of a list given without one: a hash of its valid candidates' ranks (and relevance)."""
    h = hashlib.blake2b(ranks.detach().cpu().to(torch.int64).numpy().tobytes(), digest_size=8)
    if relevance is not None:
        h.update(relevance.detach().cpu().to(torch.float64).numpy().tobytes())
    return int.from_bytes(h.digest(), "little") >> 1


def _label_seed(lists: Lists, b: int) -> int:
    v = lists.valid[b]
    return label_seed(lists.ranks[b][v], None if lists.relevance is None else lists.relevance[b][v])


def gumbel_noise(seed: int, samples: int, n: int) -> Tensor:
    """float64 [samples, n] Gumbel(0, 1) draws of one list, on the CPU, from its own generator."""
    g = torch.Generator().manual_seed(int(seed))
    u = torch.rand(samples, n, generator=g, dtype=torch.float64).clamp_min(torch.finfo(torch.float64).tiny)
    return -torch.log(-torch.log(u))


def sample_rankings(lists: Lists, temperature: float, samples: int, seeds: Tensor | None) -> Tensor:
    """[B, K, N] candidate indices, best first (padding last): K Gumbel-top-k draws from PL(s/τ).

    List b's valid candidates get the noise of `seeds[b]` in their index order, so padding (and the
    batch a list sits in) cannot change its draws."""
    B, N = lists.s.shape
    noise = torch.zeros(B, samples, N, dtype=torch.float64)
    valid_cpu = lists.valid.cpu()
    seed_list = seeds.tolist() if seeds is not None else None
    for b in range(B):
        idx = valid_cpu[b].nonzero().squeeze(-1)
        if idx.numel() >= 2:
            seed = seed_list[b] if seed_list is not None else _label_seed(lists, b)
            noise[b][:, idx] = gumbel_noise(seed, samples, idx.numel())
    key = lists.s.detach().to(torch.float64)[:, None, :] / temperature + noise.to(lists.s.device)
    key = torch.where(lists.valid[:, None, :], key, float("-inf"))
    return torch.argsort(key, dim=-1, descending=True, stable=True)


def pl_log_prob(lists: Lists, order: Tensor, temperature: float) -> Tensor:
    """log PL(π_k | s/τ) [B, K] of the orders [B, K, N] (padding last, ignored); differentiable in s."""
    z = lists.s / temperature
    low = torch.where(lists.valid, z, float("inf")).amin(-1, keepdim=True).detach()
    fill = torch.where(torch.isfinite(low), low, 0.0) - _PAD_GAP
    z = torch.where(lists.valid, z, fill)
    B, K, N = order.shape
    x = z[:, None, :].expand(B, K, N).gather(-1, order)
    v = lists.valid[:, None, :].expand(B, K, N).gather(-1, order)
    suffix = x.flip(-1).logcumsumexp(-1).flip(-1)
    return torch.where(v, x - suffix, 0.0).sum(-1)


def positions(order: Tensor) -> Tensor:
    """1-based position [B, K, N] of every candidate in each sampled order."""
    steps = torch.arange(1, order.shape[-1] + 1, device=order.device).expand_as(order)
    return torch.empty_like(order).scatter_(-1, order, steps)


def ndcg_reward(lists: Lists, pos: Tensor, k: int | None, gain: str) -> Tensor:
    """nDCG@k [B, K] of each sampled ranking (0 for a list without a positive gain)."""
    g = gains(lists, gain)
    dcg = (g[:, None, :] * discount(pos, k, g.dtype)).sum(-1)
    idcg = ideal_dcg(g, k)[:, None]
    return torch.where(idcg > 0, dcg / torch.where(idcg > 0, idcg, 1.0), 0.0)


def recall_reward(lists: Lists, pos: Tensor, k: int | None) -> Tensor:
    """Recall@k [B, K]: relevant = relevance > 0, or the teacher's top k without relevance."""
    if lists.relevance is not None:
        rel = lists.valid & (lists.relevance > 0)
    else:
        rel = lists.valid & (lists.ranks <= (k or lists.ranks.shape[-1]))
    hit = rel[:, None, :] & (pos <= (k or pos.shape[-1]))
    total = rel.sum(-1, keepdim=True).to(lists.dtype)
    return torch.where(total > 0, hit.sum(-1).to(lists.dtype) / total.clamp_min(1.0), 0.0)


def rbo_reward(lists: Lists, pos: Tensor, p: float) -> Tensor:
    """Extrapolated rank-biased overlap (Webber et al. 2010) [B, K] of each sampled ranking with the
    teacher ranking: (1 − p) Σ_{d≤n} p^(d−1) A_d + p^n A_n, A_d = |top-d ∩ teacher top-d| / d.
    Both rank all n candidates, so A_n = 1 and identical rankings score exactly 1."""
    B, K, N = pos.shape
    v = lists.valid[:, None, :].expand(B, K, N)
    deepest = torch.maximum(pos, lists.ranks[:, None, :]).clamp(max=N)  # depth from which i is in both tops
    counts = torch.zeros(B, K, N + 1, dtype=lists.dtype, device=pos.device)
    counts.scatter_add_(-1, torch.where(v, deepest, 0), v.to(lists.dtype))
    d = torch.arange(1, N + 1, device=pos.device, dtype=lists.dtype)
    agree = counts[..., 1:].cumsum(-1) / d  # A_d
    n = lists.n_valid.to(lists.dtype)[:, None, None]
    w = torch.where(d <= n, (1.0 - p) * p ** (d - 1.0), 0.0)
    return (w * agree).sum(-1) + p ** n[..., 0]


def pg_rank(
    scores: Tensor,
    ranks: Tensor,
    relevance: Tensor | None = None,
    seeds: Tensor | None = None,
    *,
    reduction: str = "mean",
    samples: int = 8,
    temperature: float = 1.0,
    k: int | None = 10,
    reward: str = "ndcg",
    labels: str = "auto",
    gain: str = "linear",
    baseline: str = "loo",
    entropy: float = 0.0,
    rbo_p: float = 0.9,
) -> Tensor:
    """PG-Rank policy-gradient loss over [B, N] candidate scores (see the module docstring).

    `samples` K rankings per list; `temperature` τ of the policy PL(s/τ); `reward` `ndcg` (nDCG@k)
    or `reasonrank` (nDCG@k + 0.2·Recall@k + 0.1·RBO(rbo_p) against the teacher order); `labels`
    `auto` takes gains from relevance when the batch has it, else from the teacher ranks (`ranks`,
    `relevance` force one); `gain` as in approxndcg; `baseline` `loo` (leave-one-out mean of the
    other K−1 rewards) or `none`; `entropy` β adds β·H(PL) to the objective (reward U − β log p,
    the score-function gradient of the entropy). `seeds` int64 [B]: each list's sampling seed.
    """
    check_params(samples=samples, temperature=temperature, k=k, reward=reward, labels=labels, gain=gain,
                 baseline=baseline, entropy=entropy, rbo_p=rbo_p)
    if labels == "relevance" and relevance is None:
        raise ValueError("pg_rank(labels='relevance') needs a relevance tensor")
    lists = prepare(scores, ranks, None if labels == "ranks" else relevance)
    if seeds is not None and tuple(seeds.shape) != (lists.s.shape[0],):
        raise ValueError(f"seeds shape {tuple(seeds.shape)} != ({lists.s.shape[0]},): one seed per list")
    order = sample_rankings(lists, temperature, samples, seeds)
    logp = pl_log_prob(lists, order, temperature)
    pos = positions(order)
    u = ndcg_reward(lists, pos, k, gain)
    if reward == "reasonrank":
        a, b, c = REASONRANK_WEIGHTS
        u = a * u + b * recall_reward(lists, pos, k) + c * rbo_reward(lists, pos, rbo_p)
    u = u.detach()
    shaped = u - entropy * logp.detach() if entropy else u
    if baseline == "loo":
        base = (shaped.sum(-1, keepdim=True) - shaped) / (samples - 1)
    else:
        base = torch.zeros_like(shaped)
    surrogate = -((shaped - base) * logp).mean(-1)
    per_list = (1.0 - u.mean(-1)) + (surrogate - surrogate.detach())
    return reduce(per_list, lists, reduction)
