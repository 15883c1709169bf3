"""Ranking losses over candidate scores: one interface for every loss.

    fn(scores [B, N], ranks [B, N], relevance [B, N] | None = None, *, reduction="mean", **params)

* `scores`: any float dtype; computed in fp32 (fp64 stays fp64).
* `ranks`: teacher rank, 1 = best; values <= 0 mark padded candidates. Over the valid candidates
  the ranks are a strict permutation (lists may have fewer than N valid candidates).
* `relevance`: optional graded labels; losses that use gains take them from here, otherwise
  from ranks via their `gain` parameter.
* `reduction`: `mean` over all B lists, `sum`, or `none` ([B]). Lists with < 2 valid candidates
  contribute 0. The trainer uses `sum` and divides by the global list count.

The implementations live in `pairwise.py` and `listwise.py`; shared plumbing in `_common.py`.
"""
from __future__ import annotations

from lrt.losses.listwise import approxndcg, listmle, listnet, softmax_ce
from lrt.losses.pairwise import lambda_weights, lambdaloss, lipo_lambda, lipo_scores, ranknet

__all__ = [
    "approxndcg",
    "lambda_weights",
    "lambdaloss",
    "lipo_lambda",
    "lipo_scores",
    "listmle",
    "listnet",
    "ranknet",
    "softmax_ce",
]
