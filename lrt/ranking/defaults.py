"""The defaults in-training evaluation, the export and `lrt rerank` share, so the nDCG logged during
training (and `select_best`) describes the scoring the export runs.

- the eval window: `default_window` (eval.window, else data.window, else 20; stride half of it);
  the export records it in `lrt_reranker.json` and `lrt rerank` uses what the export records;
- the first-stage-order diagnostic: the share of queries whose reranked top-`FIRST_STAGE_K` order
  is exactly their input order (`first_stage_share`); at or above `FIRST_STAGE_WARN` after training
  started, the model likely only reproduces the first stage.
"""
from __future__ import annotations

from typing import Mapping, Sequence

DEFAULT_WINDOW = 20  # candidates per window when neither eval.window nor data.window says (RankGPT/FIRST: 20/10)
FIRST_STAGE_K = 10  # the top-k whose order is compared with the input order
FIRST_STAGE_WARN = 0.9  # a first-stage share at or above this is warned about


def default_window(window: int | None, stride: int | None, data_window: int | None = None) -> tuple[int, int]:
    """(window, stride): `window` (eval.window / --window), else the training window, else
    DEFAULT_WINDOW; `stride`, else half the window."""
    w = window or data_window or DEFAULT_WINDOW
    return w, stride or max(1, w // 2)


def same_first_stage(ranked: Sequence[str], initial: Sequence[str], k: int = FIRST_STAGE_K) -> bool | None:
    """Whether the reranked top-k is exactly the input top-k in the same order; None for a list of
    fewer than 2 candidates (it cannot change, so it says nothing about the model)."""
    if len(initial) < 2:
        return None
    return list(ranked[:k]) == list(initial[:k])


def first_stage_counts(rankings: Mapping[str, Sequence[str]], initial: Mapping[str, Sequence[str]],
                       k: int = FIRST_STAGE_K) -> tuple[int, int]:
    """(queries whose top-k kept the input order, queries compared): lists of >= 2 candidates in both."""
    same = [same_first_stage(rankings[q], initial[q], k) for q in rankings if q in initial]
    counted = [s for s in same if s is not None]
    return sum(counted), len(counted)


def first_stage_share(rankings: Mapping[str, Sequence[str]], initial: Mapping[str, Sequence[str]],
                      k: int = FIRST_STAGE_K) -> float:
    """Share of compared queries whose reranked top-k is the input order's top-k (0.0 when none)."""
    same, n = first_stage_counts(rankings, initial, k)
    return same / n if n else 0.0
