"""Loss library: ranking losses over candidate scores and LM-side token losses.

Losses know tensors only (no model, tokenizer or config objects), so they can be unit-tested in
isolation and reused by any scoring head. See `ranking.py` for the shared interface.
"""
from __future__ import annotations

from lrt.losses.distill import kl_distill, margin_mse
from lrt.losses.lm import chunked_lm_nll, importance_weights, weighted_lm_loss
from lrt.losses.ranking import (
    approxndcg,
    lambda_weights,
    lambdaloss,
    lipo_lambda,
    lipo_scores,
    listmle,
    listnet,
    ranknet,
    softmax_ce,
)
from lrt.losses.registry import RANKING_LOSSES, TEACHER_SCORE_LOSSES, get_ranking_loss, loss_params

__all__ = [
    "RANKING_LOSSES",
    "TEACHER_SCORE_LOSSES",
    "approxndcg",
    "chunked_lm_nll",
    "get_ranking_loss",
    "importance_weights",
    "kl_distill",
    "lambda_weights",
    "lambdaloss",
    "lipo_lambda",
    "lipo_scores",
    "listmle",
    "listnet",
    "loss_params",
    "margin_mse",
    "ranknet",
    "softmax_ce",
    "weighted_lm_loss",
]
