"""Pairwise ranking losses: RankNet (FIRST), the LambdaLoss family (Wang et al., CIKM'18), LiPO-λ.

All three compare every ordered pair (i better than j) of one list at once as a [B, N, N] tensor:
N is at most a few hundred candidates, so the pair tensor is small next to an LLM forward pass,
and vectorising it is what makes these losses ~100x faster than per-pair loops.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from lrt.losses._common import (
    Lists,
    better,
    check_params,
    discount,
    gains,
    ideal_dcg,
    predicted_positions,
    prepare,
    reduce,
)

_LN2 = math.log(2.0)


def _pair_diffs(lists: Lists) -> Tensor:
    """[B, N, N] with entry (i, j) = s_i - s_j."""
    return lists.s[:, :, None] - lists.s[:, None, :]


def ranknet(
    scores: Tensor,
    ranks: Tensor,
    relevance: Tensor | None = None,
    *,
    reduction: str = "mean",
    weighting: str = "first",
    reduction_pairs: str = "pairs",
    sigma: float = 1.0,
    use_relevance: bool = False,
    gain: str = "linear",
) -> Tensor:
    """Weighted RankNet: per list  Σ_{i≻j} w_ij · softplus(−σ(s_i − s_j)) / normaliser.

    Pairs i≻j: r_i < r_j, or relevance_i > relevance_j with `use_relevance=True`.
    weighting: `none` (1), `first` (1/(r_i + r_j), FIRST), `inverse_sum` (1/r_i + 1/r_j),
    `label_diff` (|g_i − g_j|, gains from relevance if given else from ranks via `gain`).
    reduction_pairs: `pairs` divides by the number of pairs (FIRST: n(n−1)/2, so every list counts
    once whatever its length, unlike allRank's batch-wide pair mean), `weights` divides by Σw
    (TF-Ranking), a weighted mean whose scale does not depend on the weighting.
    Defaults reproduce FIRST (weighted RankNet, σ = 1, pair-count mean). `softplus` is the stable
    form of log(1 + e^x), so huge score gaps give finite values.
    """
    check_params(
        weighting=weighting, reduction_pairs=reduction_pairs, sigma=sigma, use_relevance=use_relevance, gain=gain
    )
    lists = prepare(scores, ranks, relevance)
    pairs = better(lists, use_relevance)
    r = lists.ranks.clamp_min(1).to(lists.dtype)
    if weighting == "none":
        w = torch.ones_like(pairs, dtype=lists.dtype)
    elif weighting == "first":
        w = 1.0 / (r[:, :, None] + r[:, None, :])
    elif weighting == "inverse_sum":
        w = 1.0 / r[:, :, None] + 1.0 / r[:, None, :]
    else:
        g = gains(lists, gain)
        w = (g[:, :, None] - g[:, None, :]).abs()
    w = torch.where(pairs, w, 0.0)
    num = (w * F.softplus(-sigma * _pair_diffs(lists))).sum((1, 2))
    den = pairs.sum((1, 2)).to(lists.dtype) if reduction_pairs == "pairs" else w.sum((1, 2))
    return reduce(num / torch.where(den > 0, den, 1.0), lists, reduction)


def _lambda_weights(lists: Lists, scheme: str, k: int | None, mu: float, gain: str) -> tuple[Tensor, Tensor]:
    """(weights, pair mask), both [B, N, N] and detached. See `lambda_weights`."""
    g = gains(lists, gain).detach()
    max_dcg = ideal_dcg(g, k)[:, None]
    big_g = torch.where(max_dcg > 0, g / torch.where(max_dcg > 0, max_dcg, 1.0), 0.0)
    pos = predicted_positions(lists)
    d = discount(pos, k, lists.dtype)
    v = lists.valid
    if scheme == "ndcg_loss1":
        eye = torch.eye(v.shape[-1], dtype=torch.bool, device=v.device)
        pairs = v[:, :, None] & v[:, None, :] & ~eye
        w = (big_g * d)[:, :, None].expand(pairs.shape)
    else:
        pairs = better(lists, lists.relevance is not None)
        d_gain = (big_g[:, :, None] - big_g[:, None, :]).abs()
        lambdarank = d_gain * (d[:, :, None] - d[:, None, :]).abs()
        if scheme == "lambdarank":
            w = lambdarank
        else:
            gap = (pos[:, :, None] - pos[:, None, :]).abs().clamp_min(1).to(lists.dtype)
            delta = (1.0 / torch.log2(1.0 + gap) - 1.0 / torch.log2(2.0 + gap)).abs()
            w = delta * d_gain if scheme == "ndcg_loss2" else mu * delta * d_gain + lambdarank
    if k is not None:
        top = torch.minimum(pos[:, :, None], pos[:, None, :]) <= k
        pairs = pairs & top
    return torch.where(pairs, w, 0.0).detach(), pairs


def lambda_weights(
    scores: Tensor,
    ranks: Tensor,
    relevance: Tensor | None = None,
    *,
    scheme: str = "ndcg_loss2pp",
    k: int | None = None,
    mu: float = 10.0,
    gain: str = "linear",
) -> Tensor:
    """LambdaLoss pair weights w_ij [B, N, N] (0 off the pair set), from current positions ρ.

    With G_i = g_i / maxDCG@k and D(ρ) = log2(1 + ρ) (1/D := 0 for ρ > k), Wang et al. CIKM'18:
      lambdarank:   |G_i − G_j| · |1/D(ρ_i) − 1/D(ρ_j)|   (= |ΔNDCG@k| of swapping i and j)
      ndcg_loss2:   |G_i − G_j| · δ_ij,  δ_ij = |1/D(|ρ_i − ρ_j|) − 1/D(|ρ_i − ρ_j| + 1)|
      ndcg_loss2pp: μ · ndcg_loss2 + lambdarank
      ndcg_loss1:   G_i / D(ρ_i) for every valid j ≠ i (the exponent of NDCG-Loss1)
    Pairs i≻j come from relevance (y_i > y_j) if given, else from ranks (r_i < r_j). With k, only
    pairs with at least one member in the predicted top-k are kept (TF-Ranking `topn`); pairs
    fully below k would get weight 0 from the truncated discount under LambdaRank anyway.
    δ uses log2(1 + |ρ_i − ρ_j|) as in the paper (pytorchltr is one step off). The weights are
    detached: they depend on the ranking, not differentiably on the scores.
    """
    check_params(scheme=scheme, k=k, mu=mu, gain=gain)
    return _lambda_weights(prepare(scores.detach(), ranks, relevance), scheme, k, mu, gain)[0]


def lambdaloss(
    scores: Tensor,
    ranks: Tensor,
    relevance: Tensor | None = None,
    *,
    reduction: str = "mean",
    scheme: str = "ndcg_loss2pp",
    k: int | None = None,
    sigma: float = 1.0,
    mu: float = 10.0,
    gain: str = "linear",
) -> Tensor:
    """LambdaLoss: per list Σ_{pairs} w_ij · log2(1 + exp(−σ(s_i − s_j))), w from `lambda_weights`.

    Default scheme `ndcg_loss2pp` (μ = 10) is the paper's best metric-driven bound. Default
    `gain="linear"` (n + 1 − r for ranks, y for relevance): exponential gains on permutation
    labels concentrate almost all weight on the top 1–2 candidates and overflow for n >= 128.
    The sum over pairs is per list (paper); gains are divided by maxDCG@k so lists are comparable.
    """
    check_params(scheme=scheme, k=k, sigma=sigma, mu=mu, gain=gain)
    lists = prepare(scores, ranks, relevance)
    w, _ = _lambda_weights(lists, scheme, k, mu, gain)
    per_pair = F.softplus(-sigma * _pair_diffs(lists)) / _LN2
    return reduce((w * per_pair).sum((1, 2)), lists, reduction)


def lipo_scores(policy_logps: Tensor, ref_logps: Tensor, beta: float) -> Tensor:
    """LiPO scores s_i = β · (log π_θ(y_i|x) − log π_ref(y_i|x)), [B, N].

    The reference model is frozen, so `ref_logps` is detached: no gradient may reach it even if
    the caller computed it with grad enabled (e.g. a LoRA policy whose adapters are disabled).
    Inputs are *sequence* log-probabilities of each candidate response (sum of token log-probs).
    """
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta={beta!r} must be a finite number > 0")
    if policy_logps.shape != ref_logps.shape:
        raise ValueError(f"policy {tuple(policy_logps.shape)} and ref {tuple(ref_logps.shape)} shapes differ")
    return beta * (policy_logps - ref_logps.detach().to(policy_logps.dtype))


def lipo_lambda(
    scores: Tensor,
    ranks: Tensor,
    relevance: Tensor | None = None,
    *,
    reduction: str = "mean",
    gain: str = "linear",
) -> Tensor:
    """LiPO-λ (Liu et al. 2024, arXiv 2402.01878): per list −Σ_{ψ_i>ψ_j} Δ_ij · log σ(s_i − s_j).

    `scores` must come from `lipo_scores`: the trainer supplies the sequence log-prob of every
    candidate response under the policy and under a frozen reference model. Δ_ij are the
    LambdaRank weights |G_i − G_j| · |1/D(τ_i) − 1/D(τ_j)| at the current ranking τ by s,
    detached. Labels ψ are `relevance` if given, else teacher ranks. The paper's G = 2^ψ − 1 is
    `gain="exp"` with relevance; default `linear` for permutation labels (see `lambdaloss`).
    Relative to the paper, Δ is divided by maxDCG and uses log2 in D — a positive per-list
    constant, so the optimum and gradient directions are unchanged. K = 2 gives Δ · DPO.
    """
    check_params(gain=gain)
    lists = prepare(scores, ranks, relevance)
    w, _ = _lambda_weights(lists, "lambdarank", None, 0.0, gain)
    return reduce((w * F.softplus(-_pair_diffs(lists))).sum((1, 2)), lists, reduction)
