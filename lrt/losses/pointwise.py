"""Pointwise binary cross-entropy over candidate scores (yes/no rerankers, FlagEmbedding/ms-swift style).

Same interface as every ranking loss (`loss(scores [B, N], ranks [B, N], relevance=None)`), so it
mixes with the listwise terms of a recipe. Scores are logits (logit(yes) - logit(no)).
"""
from __future__ import annotations

import torch
from torch import Tensor

from lrt.losses._common import check_params, prepare, reduce


def bce(
    scores: Tensor,
    ranks: Tensor,
    relevance: Tensor | None = None,
    *,
    reduction: str = "mean",
    use_relevance: bool = True,
    top_k: int | None = 1,
) -> Tensor:
    """Mean over a list's valid candidates of BCE-with-logits(s_i, t_i).

    Targets: graded relevance scaled by the list's maximum, t_i = y_i / max_j y_j (0 when no
    candidate is relevant), when `relevance` is given and `use_relevance`; otherwise from teacher
    ranks, t_i = 1 for the `top_k` best (rank <= top_k) and 0 for the rest (None: top_k = 1)."""
    check_params(reduction=reduction, use_relevance=use_relevance, top_k=top_k)
    lists = prepare(scores, ranks, relevance)
    if use_relevance and lists.relevance is not None:
        y = lists.relevance
        top = torch.where(lists.valid, y, 0.0).amax(-1, keepdim=True)
        t = torch.where(top > 0, y / top.clamp_min(1e-12), 0.0)
    else:
        t = ((lists.ranks >= 1) & (lists.ranks <= (top_k or 1))).to(lists.dtype)
    per = torch.nn.functional.binary_cross_entropy_with_logits(lists.s, t, reduction="none")
    per = torch.where(lists.valid, per, 0.0)
    per_list = per.sum(-1) / lists.n_valid.clamp_min(1).to(lists.dtype)
    return reduce(per_list, lists, reduction)
