"""Shared plumbing for the ranking losses: input checks, padding, gains, NDCG pieces, reduction.

Every ranking loss goes through these helpers so that they all agree on the conventions of the
interface (see `lrt.losses.ranking`):

* scores are upcast to fp32 (fp64 stays fp64 so `gradcheck` works);
* a candidate is valid iff its teacher rank is >= 1; padded scores are *replaced* by 0 with
  `torch.where` before any arithmetic, so arbitrary padded values (1e30, inf, NaN) can neither
  change a loss nor receive a gradient;
* no row ever reaches `logsumexp` with only -inf entries (that gives NaN gradients);
* a list with fewer than two valid candidates contributes exactly 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

REDUCTIONS = ("mean", "sum", "none")

# Allowed values of every string-valued loss parameter. The losses validate against this table at
# call time and the registry at construction time, so a typo in a recipe fails before training.
PARAM_CHOICES: dict[str, tuple[Any, ...]] = {
    "reduction": REDUCTIONS,
    "gain": ("linear", "inverse", "exp", "exp_safe"),
    "weighting": ("none", "first", "inverse_sum", "label_diff"),
    "reduction_pairs": ("pairs", "weights"),
    "scheme": ("lambdarank", "ndcg_loss1", "ndcg_loss2", "ndcg_loss2pp"),
    "alpha": (None, "inv_log2", "one_plus_inv_log2"),
    "target": ("ranks", "relevance"),
    "margins": ("positive", "all_pairs"),  # margin_mse (lrt.losses.distill)
    # pg_rank (lrt.losses.pg_rank)
    "reward": ("ndcg", "reasonrank"),
    "labels": ("auto", "ranks", "relevance"),
    "baseline": ("loo", "none"),
}
_POSITIVE = ("sigma", "temperature")  # must be finite and > 0
_NON_NEGATIVE = ("mu", "entropy")
_OPTIONAL_COUNT = ("k", "top_k")  # None or an int >= 1


def check_param(name: str, value: Any) -> None:
    """Raise ValueError if `value` is not a legal setting for the loss parameter `name`."""
    if name in PARAM_CHOICES:
        if value not in PARAM_CHOICES[name]:
            raise ValueError(f"{name}={value!r} is not allowed; choose one of {PARAM_CHOICES[name]}")
    elif name in _POSITIVE or name in _NON_NEGATIVE:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or value < 0 or (name in _POSITIVE and value == 0):
            kind = "> 0" if name in _POSITIVE else ">= 0"
            raise ValueError(f"{name}={value!r} must be a finite number {kind}")
    elif name in _OPTIONAL_COUNT:
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ValueError(f"{name}={value!r} must be None or an int >= 1")
    elif name == "samples":  # pg_rank: the leave-one-out baseline needs two rankings per list
        if not isinstance(value, int) or isinstance(value, bool) or value < 2:
            raise ValueError(f"samples={value!r} must be an int >= 2")
    elif name == "rbo_p":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1
        if not ok:
            raise ValueError(f"rbo_p={value!r} must be a number in (0, 1)")
    elif name == "use_relevance" and not isinstance(value, bool):
        raise ValueError(f"use_relevance={value!r} must be a bool")


def check_params(**params: Any) -> None:
    for name, value in params.items():
        check_param(name, value)


@dataclass(frozen=True)
class Lists:
    """A validated, padded batch of candidate lists.

    s: [B, N] scores in the compute dtype, padded entries set to 0.
    ranks: [B, N] teacher ranks, padded entries set to 0.
    valid: [B, N] bool, ranks >= 1.
    n_valid: [B] number of valid candidates per list.
    relevance: [B, N] graded labels in the compute dtype (padded = 0), or None.
    """

    s: Tensor
    ranks: Tensor
    valid: Tensor
    n_valid: Tensor
    relevance: Tensor | None

    @property
    def dtype(self) -> torch.dtype:
        return self.s.dtype


def prepare(scores: Tensor, ranks: Tensor, relevance: Tensor | None = None) -> Lists:
    """Check shapes/dtypes, upcast, and neutralise padded entries (see module docstring)."""
    if scores.dim() != 2:
        raise ValueError(f"scores must be [B, N], got shape {tuple(scores.shape)}")
    if ranks.shape != scores.shape:
        raise ValueError(f"ranks shape {tuple(ranks.shape)} != scores shape {tuple(scores.shape)}")
    if ranks.dtype.is_floating_point or ranks.dtype.is_complex or ranks.dtype == torch.bool:
        raise ValueError(f"ranks must be an integer tensor (1 = best, <= 0 = padding), got {ranks.dtype}")
    if not scores.dtype.is_floating_point:
        raise ValueError(f"scores must be floating point, got {scores.dtype}")
    dtype = torch.float64 if scores.dtype == torch.float64 else torch.float32
    valid = ranks > 0
    zero = scores.new_zeros((), dtype=dtype)
    s = torch.where(valid, scores.to(dtype), zero)
    rel = None
    if relevance is not None:
        if relevance.shape != scores.shape:
            raise ValueError(f"relevance shape {tuple(relevance.shape)} != scores shape {tuple(scores.shape)}")
        rel = torch.where(valid, relevance.to(device=s.device, dtype=dtype), zero)
    return Lists(s, torch.where(valid, ranks, 0), valid, valid.sum(-1), rel)


def gains(lists: Lists, gain: str) -> Tensor:
    """Per-candidate gain [B, N] (0 for padding).

    With relevance y: linear = y (trec_eval), exp = 2^y - 1 (LTR libraries), exp_safe =
    2^(y - max y) - 2^(-max y), i.e. exp scaled by 2^-max so it never overflows (TF-Ranking).
    From ranks r of n valid candidates: linear = n + 1 - r, inverse = 1/r, exp_safe =
    2^(1-r) - 2^(1-n) (= exp gain of y = n - r, scaled). Raw `exp` of a permutation label would
    overflow fp32 for n >= 128 and is refused; `inverse` needs ranks and is refused with relevance.
    Relevance of valid candidates must be >= 0 (NDCG assumes non-negative gains).
    """
    check_param("gain", gain)
    valid, dtype = lists.valid, lists.dtype
    if lists.relevance is not None:
        y = lists.relevance
        if gain == "inverse":
            raise ValueError("gain='inverse' is rank-based; with relevance use 'linear', 'exp' or 'exp_safe'")
        if gain == "linear":
            g = y
        elif gain == "exp":
            g = torch.exp2(y) - 1.0
        else:
            top = torch.where(valid, y, float("-inf")).amax(-1, keepdim=True)
            top = torch.where(torch.isfinite(top), top, 0.0)
            g = torch.exp2(y - top) - torch.exp2(-top)
    else:
        r = lists.ranks.clamp_min(1).to(dtype)
        n = lists.n_valid.to(dtype)[:, None]
        if gain == "exp":
            raise ValueError("gain='exp' overflows for permutation labels (2^(n-r)); use 'exp_safe'")
        if gain == "linear":
            g = n + 1.0 - r
        elif gain == "inverse":
            g = 1.0 / r
        else:
            g = torch.exp2(1.0 - r) - torch.exp2(1.0 - n)
    return torch.where(valid, g, 0.0)


def better(lists: Lists, use_relevance: bool) -> Tensor:
    """[B, N, N] bool: (i, j) is a training pair, i.e. i should be ranked above j.

    By teacher rank (r_i < r_j) or, with `use_relevance`, by graded label (y_i > y_j; ties are
    not pairs). Only valid x valid entries can be True.
    """
    v = lists.valid
    both = v[:, :, None] & v[:, None, :]
    if use_relevance:
        if lists.relevance is None:
            raise ValueError("use_relevance=True needs a relevance tensor")
        y = lists.relevance
        return both & (y[:, :, None] > y[:, None, :])
    r = lists.ranks
    return both & (r[:, :, None] < r[:, None, :])


def predicted_positions(lists: Lists) -> Tensor:
    """1-based position [B, N] of each candidate when sorted by current score (padding last).

    Detached: LambdaLoss-style weights are constants w.r.t. the scores. Stable sort, so exact
    score ties are broken by index (measure-zero for real-valued scores).
    """
    key = torch.where(lists.valid, lists.s.detach(), float("-inf"))
    order = torch.argsort(key, dim=-1, descending=True, stable=True)
    n = key.shape[-1]
    steps = torch.arange(1, n + 1, device=key.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, steps)


def discount(positions: Tensor, k: int | None, dtype: torch.dtype) -> Tensor:
    """DCG discount 1/log2(1 + p), set to 0 beyond the cutoff k (NDCG@k)."""
    p = positions.to(dtype)
    d = 1.0 / torch.log2(1.0 + p.clamp_min(1.0))
    if k is not None:
        d = torch.where(p <= k, d, 0.0)
    return d


def ideal_dcg(g: Tensor, k: int | None) -> Tensor:
    """maxDCG@k [B] of gains g [B, N] (gains >= 0; padding has gain 0 and sorts last)."""
    top = torch.sort(g, dim=-1, descending=True).values
    pos = torch.arange(1, g.shape[-1] + 1, device=g.device)
    return (top * discount(pos, k, g.dtype)).sum(-1)


def masked_log_softmax(x: Tensor, valid: Tensor) -> Tensor:
    """log-softmax over valid entries only; 0 at padding.

    Padding enters logsumexp as -inf only in rows that have a valid entry; all-padding rows use
    0 instead, so logsumexp is always finite and its backward never computes exp(-inf + inf).
    """
    has_valid = valid.any(-1, keepdim=True)
    fill = torch.where(has_valid, float("-inf"), 0.0).to(x.dtype)
    z = torch.where(valid, x, fill)
    return torch.where(valid, z - torch.logsumexp(z, -1, keepdim=True), 0.0)


def reduce(per_list: Tensor, lists: Lists, reduction: str) -> Tensor:
    """Zero lists with < 2 valid candidates, then reduce over lists.

    `mean` divides by all B lists (degenerate ones included), so `sum == mean * B` and the
    trainer can use `sum` and divide by the global list count itself.
    """
    check_param("reduction", reduction)
    per_list = torch.where(lists.n_valid >= 2, per_list, 0.0)
    if reduction == "none":
        return per_list
    total = per_list.sum()
    return total if reduction == "sum" else total / max(per_list.shape[0], 1)
