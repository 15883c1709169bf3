"""Listwise ranking losses: ListNet, ListMLE / p-ListMLE, ApproxNDCG, softmax cross-entropy.

They work on whole lists ([B, N]) so they cost O(N) or O(N²) tensor ops per batch and no loops.
"""
from __future__ import annotations

import torch
from torch import Tensor

from lrt.losses._common import check_params, gains, ideal_dcg, masked_log_softmax, prepare, reduce

# A padded entry placed this far below the smallest valid score contributes exp(-1e4) == 0 exactly
# (fp32 and fp64) to every log-sum-exp, yet stays finite so logcumsumexp gradients stay finite.
_PAD_GAP = 1.0e4


def listnet(
    scores: Tensor,
    ranks: Tensor,
    relevance: Tensor | None = None,
    *,
    reduction: str = "mean",
    temperature: float = 1.0,
    target: str = "ranks",
) -> Tensor:
    """ListNet top-1 cross-entropy: −Σ_i P_t(i) · log softmax(s)_i over valid candidates.

    target `ranks`: P_t = softmax(−r / τ_t). This equals softmax of linear gains (n + 1 − r)/τ_t,
    and, unlike softmax of raw labels, is independent of the list length and of padding: the
    teacher's odds between ranks r and r+1 are always e^(1/τ_t). τ_t = 1 puts ~63% of the mass
    on rank 1; larger τ_t spreads it over the head. target `relevance`: P_t = softmax(y / τ_t)
    (allRank). `temperature` only shapes the target; scores are used as they are.
    """
    check_params(temperature=temperature, target=target)
    lists = prepare(scores, ranks, relevance)
    if target == "relevance":
        if lists.relevance is None:
            raise ValueError("listnet(target='relevance') needs a relevance tensor")
        t = lists.relevance / temperature
    else:
        t = -lists.ranks.to(lists.dtype) / temperature
    p_t = torch.where(lists.valid, masked_log_softmax(t, lists.valid).exp(), 0.0)
    per_list = -(p_t * masked_log_softmax(lists.s, lists.valid)).sum(-1)
    return reduce(per_list, lists, reduction)


def _position_weights(n: int, alpha: str | None, top_k: int | None, like: Tensor) -> Tensor:
    """α(k) for teacher positions k = 1..n (p-ListMLE), 0 beyond top_k."""
    k = torch.arange(1, n + 1, device=like.device, dtype=like.dtype)
    if alpha is None:
        a = torch.ones_like(k)
    else:
        a = 1.0 / torch.log2(1.0 + k)
        if alpha == "one_plus_inv_log2":
            a = 1.0 + a
    if top_k is not None:
        a = torch.where(k <= top_k, a, 0.0)
    return a


def listmle(
    scores: Tensor,
    ranks: Tensor,
    relevance: Tensor | None = None,
    *,
    reduction: str = "mean",
    top_k: int | None = None,
    alpha: str | None = None,
) -> Tensor:
    """ListMLE = −log P_PL(π* | s): Σ_k α(k) [log Σ_{l≥k} exp s_{π*(l)} − s_{π*(k)}].

    π* is the teacher permutation (ranks are a strict order, so no random tie-breaking and the
    loss is deterministic; `relevance` is ignored). `top_k` sums only k <= top_k (trust only the
    head of the teacher ranking). `alpha` gives p-ListMLE (Lan et al. 2014) position weights:
    `inv_log2` = 1/log2(1+k), `one_plus_inv_log2` = 1 + 1/log2(1+k) (mirrors fullrank's token
    weights). Suffix log-sum-exps use `logcumsumexp` on the flipped sequence — exact, no eps.
    """
    check_params(top_k=top_k, alpha=alpha)
    lists = prepare(scores, ranks, relevance)
    big = torch.iinfo(lists.ranks.dtype).max
    order = torch.argsort(torch.where(lists.valid, lists.ranks, big), dim=-1, stable=True)
    s = lists.s.gather(1, order)
    v = lists.valid.gather(1, order)
    low = torch.where(lists.valid, lists.s, float("inf")).amin(-1, keepdim=True).detach()
    fill = torch.where(torch.isfinite(low), low, 0.0) - _PAD_GAP
    x = torch.where(v, s, fill)
    suffix_lse = x.flip(-1).logcumsumexp(-1).flip(-1)
    a = _position_weights(x.shape[-1], alpha, top_k, x)
    per_list = torch.where(v, a * (suffix_lse - x), 0.0).sum(-1)
    return reduce(per_list, lists, reduction)


def approxndcg(
    scores: Tensor,
    ranks: Tensor,
    relevance: Tensor | None = None,
    *,
    reduction: str = "mean",
    temperature: float = 1.0,
    gain: str = "linear",
) -> Tensor:
    """ApproxNDCG (Qin et al. 2010): 1 − (1/maxDCG) Σ_i g_i / log2(1 + π̂_i).

    π̂_i = 1 + Σ_{j≠i valid} σ((s_j − s_i)/T) is a smooth rank; as T → 0 it becomes the exact
    rank and the loss becomes 1 − NDCG. Returned as 1 − ApproxNDCG (not −ApproxNDCG) so a
    perfect list scores ~0 like a degenerate list does; gradients are identical. Default T = 1
    (allRank) rather than TF-Ranking's 0.1: LLM logit gaps between candidates are O(1), and at
    T = 0.1 the sigmoids saturate and gradients vanish. Gains from relevance, else ranks (`gain`,
    default linear). Lists with maxDCG = 0 (no relevant candidate) contribute 0.
    """
    check_params(temperature=temperature, gain=gain)
    lists = prepare(scores, ranks, relevance)
    g = gains(lists, gain)
    v = lists.valid
    eye = torch.eye(v.shape[-1], dtype=torch.bool, device=v.device)
    others = v[:, None, :] & ~eye  # (i, j): j is another valid candidate
    beats = torch.sigmoid((lists.s[:, None, :] - lists.s[:, :, None]) / temperature)
    approx_rank = 1.0 + torch.where(others, beats, 0.0).sum(-1)
    dcg = (g / torch.log2(1.0 + approx_rank)).sum(-1)
    max_dcg = ideal_dcg(g, None)
    ok = max_dcg > 0
    return reduce(torch.where(ok, 1.0 - dcg / torch.where(ok, max_dcg, 1.0), 0.0), lists, reduction)


def softmax_ce(
    scores: Tensor,
    ranks: Tensor,
    relevance: Tensor | None = None,
    *,
    reduction: str = "mean",
) -> Tensor:
    """Cross-entropy of the rank-1 candidate: −s_top + logsumexp_{valid} s.

    ListMLE truncated at depth 1, and what a first-token scorer trained on the teacher's top
    choice optimises (softmax over the candidates' ID logits only, not the whole vocabulary).
    """
    lists = prepare(scores, ranks, relevance)
    top = lists.valid & (lists.ranks == 1)
    per_list = -torch.where(top, masked_log_softmax(lists.s, lists.valid), 0.0).sum(-1)
    return reduce(per_list, lists, reduction)
