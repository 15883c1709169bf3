"""Sequence-level LiPO-λ (Liu et al. 2024) over K complete rankings of one query.

The "responses" are K permutation strings `[C] > [A] > ...` of the query's candidates: the teacher's
ranking and seeded perturbations of it. Each response k has a label ψ_k = its nDCG against the
teacher (graded relevance if the data has it, else linear gains n + 1 − r from the teacher ranks)
and an implicit reward s_k = β (log π_θ(y_k | x) − log π_ref(y_k | x)) from whole-answer
sequence log-probs (computed in `lrt.objective.lipo_k`). The loss is LiPO-λ over those K responses:
Σ_{ψ_i > ψ_j} Δ_ij · log(1 + exp(−(s_i − s_j))), Δ_ij the LambdaRank weight with G = 2^ψ − 1 at
the current ranking of the responses by s (`lrt.losses.pairwise.lipo_lambda`, gain `exp`).

A ranking is an *order* tensor: order[p] = display index of the candidate at output rank p + 1,
−1 beyond the list's valid candidates.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor

from lrt.losses._common import discount, gains, ideal_dcg, prepare
from lrt.losses.pairwise import lipo_lambda

SOURCES = ("teacher_perturbed",)
PERTURB = ("adjacent", "random")

# recipe params of the `lipo_k` term: name -> (default, what a legal value is)
LIPO_K_PARAMS: dict[str, tuple[Any, str]] = {
    "num_rankings": (4, "an int >= 2 (K: the teacher ranking plus K - 1 perturbations)"),
    "beta": (0.1, "a finite number > 0 (scale of the policy - reference log-prob)"),
    "source": ("teacher_perturbed", f"one of {SOURCES}"),
    "perturb": ("adjacent", f"one of {PERTURB} (adjacent swaps or transpositions of any two ranks)"),
    "swaps": (1, "an int >= 1 (swaps applied to the teacher ranking per perturbed ranking)"),
    "seed": (0, "an int >= 0 (the perturbations are a function of seed and the list's tokens)"),
    "k": (None, "null or an int >= 1 (the nDCG cutoff of the labels)"),
}


def _int(v: Any, lo: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def lipo_k_problems(params: dict[str, Any]) -> dict[str, str]:
    """{param: problem} for the `lipo_k` term's params (the registry adds did-you-mean for names)."""
    out: dict[str, str] = {}
    for key, value in params.items():
        if key not in LIPO_K_PARAMS:
            continue  # unknown names are reported by the registry
        ok = {
            "num_rankings": lambda v: _int(v, 2),
            "beta": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0,
            "source": lambda v: v in SOURCES,
            "perturb": lambda v: v in PERTURB,
            "swaps": lambda v: _int(v, 1),
            "seed": lambda v: _int(v, 0),
            "k": lambda v: v is None or _int(v, 1),
        }[key](value)
        if not ok:
            out[key] = f"{key}={value!r} must be {LIPO_K_PARAMS[key][1]}"
    return out


def teacher_order(ranks: Tensor) -> Tensor:
    """[B, N] order of the teacher ranking (candidate index per output rank), −1 past n_valid."""
    key = torch.where(ranks > 0, ranks, ranks.new_full((), torch.iinfo(ranks.dtype).max))
    order = torch.argsort(key, dim=-1, stable=True)
    pos = torch.arange(ranks.shape[-1], device=ranks.device)
    return torch.where(pos < (ranks > 0).sum(-1, keepdim=True), order, -1)


def perturbed_orders(ranks: Tensor, seeds: Sequence[int], num_rankings: int, perturb: str, swaps: int) -> Tensor:
    """[B, K, N] orders: k = 0 is the teacher's, k >= 1 apply `swaps` seeded swaps to it.

    Deterministic: list b's perturbations depend only on seeds[b] (so on the list, not on the batch
    it lands in, the step or the process), drawn on a CPU generator."""
    base = teacher_order(ranks).cpu()
    n_valid = (ranks > 0).sum(-1).cpu().tolist()
    out = base[:, None, :].repeat(1, num_rankings, 1)
    for b, n in enumerate(n_valid):
        if n < 2:
            continue
        g = torch.Generator().manual_seed(int(seeds[b]))
        for k in range(1, num_rankings):
            o = out[b, k]
            for _ in range(swaps):
                if perturb == "adjacent":
                    i = int(torch.randint(n - 1, (1,), generator=g))
                    j = i + 1
                else:
                    i, j = (int(x) for x in torch.randperm(n, generator=g)[:2])
                o[i], o[j] = o[j].clone(), o[i].clone()
    return out.to(ranks.device)


def ranking_labels(orders: Tensor, ranks: Tensor, relevance: Tensor | None = None, k: int | None = None) -> Tensor:
    """ψ [B, K] (fp32): nDCG@k of each ranking against the teacher (graded relevance with linear
    gains, trec_eval's, when given; else gains n + 1 − r of the teacher ranks)."""
    lists = prepare(torch.zeros(ranks.shape, dtype=torch.float32, device=ranks.device), ranks, relevance)
    g = gains(lists, "linear")  # [B, N]
    idcg = ideal_dcg(g, k)  # [B]
    got = torch.gather(g[:, None, :].expand(orders.shape), 2, orders.clamp_min(0))
    got = torch.where(orders >= 0, got, 0.0)
    pos = torch.arange(1, orders.shape[-1] + 1, device=orders.device)
    dcg = (got * discount(pos, k, g.dtype)).sum(-1)  # [B, K]
    return torch.where(idcg[:, None] > 0, dcg / torch.where(idcg > 0, idcg, 1.0)[:, None], 0.0)


def lipo_k(seq_scores: Tensor, labels: Tensor, *, reduction: str = "mean") -> Tensor:
    """LiPO-λ over K responses per query: seq_scores s [B, K] (from `lipo_scores` on sequence
    log-probs), labels ψ [B, K] (`ranking_labels`). Pairs ψ_i > ψ_j (ties are no pair);
    Δ_ij = |G_i − G_j| |1/D(τ_i) − 1/D(τ_j)|, G = 2^ψ − 1 divided by maxDCG of the K labels (a
    positive per-query constant, as `lipo_lambda`), D(τ) = log2(1 + τ), τ = rank by s. fp32."""
    with torch.autocast(device_type=seq_scores.device.type, enabled=False):
        order = torch.argsort(labels.detach(), dim=-1, descending=True, stable=True)
        steps = torch.arange(1, labels.shape[-1] + 1, device=labels.device).expand_as(order)
        label_ranks = torch.empty_like(order).scatter_(1, order, steps)
        return lipo_lambda(seq_scores, label_ranks, labels, reduction=reduction, gain="exp")
