"""Score distillation: train the student's candidate scores on a teacher's *scores*, not only its ranks.

    fn(scores [B, N], ranks [B, N], teacher_scores [B, N], *, reduction="mean", **params)

The same interface as the ranking losses (`lrt.losses.ranking`), except that the third tensor is the
teacher's per-candidate score (a cross-encoder's logit, an LLM teacher's first-token identifier
log-prob), aligned with `scores`, instead of graded relevance. `ranks` still mark the valid
candidates (rank >= 1) and, for Margin-MSE, the positive (rank 1). Both tensors are computed in fp32
(fp64 stays fp64); padded entries of either are replaced by 0 before any arithmetic, so padding can
neither change a loss nor receive a gradient. A list with < 2 valid candidates contributes 0.
"""
from __future__ import annotations

import torch
from torch import Tensor

from lrt.losses._common import Lists, check_params, masked_log_softmax, prepare, reduce

# Losses that read a teacher-score tensor: the objective passes `batch["teacher_scores"]` to them and
# training/validation refuse data without per-candidate `teacher_scores`.
TEACHER_SCORE_LOSSES = ("margin_mse", "kl_distill")


def _teacher(lists: Lists, teacher_scores: Tensor | None, name: str) -> Tensor:
    if teacher_scores is None:
        raise ValueError(f"{name} needs teacher_scores [B, N] (per-candidate teacher scores); got None")
    if teacher_scores.shape != lists.s.shape:
        raise ValueError(f"teacher_scores shape {tuple(teacher_scores.shape)} != scores shape {tuple(lists.s.shape)}")
    if not teacher_scores.dtype.is_floating_point:
        raise ValueError(f"teacher_scores must be floating point, got {teacher_scores.dtype}")
    t = teacher_scores.detach().to(device=lists.s.device, dtype=lists.dtype)
    return torch.where(lists.valid, t, 0.0)  # a constant target: never differentiated


def margin_mse(
    scores: Tensor,
    ranks: Tensor,
    teacher_scores: Tensor | None = None,
    *,
    reduction: str = "mean",
    margins: str = "positive",
) -> Tensor:
    """Margin-MSE (Hofstätter et al. 2020): mean squared error between student and teacher margins.

    `margins: positive` (default, the paper's triplet form extended to a list as sentence-transformers'
    CrossEncoder MarginMSELoss does): the positive is the teacher's rank-1 candidate and each other valid
    candidate j is a negative; per list the mean over j of ((s_pos − s_j) − (t_pos − t_j))².
    `margins: all_pairs`: the mean over every unordered pair i < j of valid candidates of
    ((s_i − s_j) − (t_i − t_j))². Only differences are matched, so the student may keep its own score
    offset (first-token logits and a cross-encoder's logits need not share a scale's origin).
    """
    check_params(reduction=reduction, margins=margins)
    lists = prepare(scores, ranks)
    t = _teacher(lists, teacher_scores, "margin_mse")
    d = lists.s - t  # margin error of (i, j) = d_i - d_j
    v = lists.valid
    if margins == "positive":
        top = v & (lists.ranks == 1)
        d_pos = torch.where(top, d, 0.0).sum(-1, keepdim=True)
        neg = v & ~top
        sq = torch.where(neg, (d_pos - d) ** 2, 0.0).sum(-1)
        per_list = sq / neg.sum(-1).clamp_min(1).to(lists.dtype)
    else:
        pair = v[:, :, None] & v[:, None, :]
        diff = d[:, :, None] - d[:, None, :]
        sq = torch.where(pair, diff ** 2, 0.0).sum((-1, -2)) / 2  # each unordered pair counted twice
        n = lists.n_valid.to(lists.dtype)
        per_list = sq / (n * (n - 1) / 2).clamp_min(1.0)
    return reduce(per_list, lists, reduction)


def kl_distill(
    scores: Tensor,
    ranks: Tensor,
    teacher_scores: Tensor | None = None,
    *,
    reduction: str = "mean",
    temperature: float = 1.0,
) -> Tensor:
    """τ² · KL(softmax(t/τ) ‖ softmax(s/τ)) over a list's valid candidates (Hinton et al.'s τ²: the
    gradient's scale stays the same as τ changes). Equals τ² · (ListNet cross-entropy with the
    teacher's softmax as target − the teacher's entropy), so it is 0 exactly when the student's
    distribution matches the teacher's, and invariant to adding a constant to either score vector."""
    check_params(reduction=reduction, temperature=temperature)
    lists = prepare(scores, ranks)
    t = _teacher(lists, teacher_scores, "kl_distill")
    v = lists.valid
    log_pt = masked_log_softmax(t / temperature, v)
    log_ps = masked_log_softmax(lists.s / temperature, v)
    per_list = torch.where(v, log_pt.exp() * (log_pt - log_ps), 0.0).sum(-1) * temperature ** 2
    return reduce(per_list, lists, reduction)
