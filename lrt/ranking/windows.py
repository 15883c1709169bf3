"""The sliding-window plan and the score rule (see `lrt.ranking`): which windows a list is ranked
in, and how the last window's raw scores become strictly decreasing final scores."""
from __future__ import annotations

from typing import Sequence

from lrt.data.schema import Candidate

SCORE_STEP = 1e-3  # the margin of the running-minimum rule that makes final scores strictly decreasing
Query = tuple[str, str, Sequence[Candidate]]  # (qid, query text, candidates in first-stage order)
# (qid, query text, the window's candidates in current order); (query, candidates) is accepted too
Window = tuple[str, str, Sequence[Candidate]] | tuple[str, Sequence[Candidate]]


def unpack_window(item: Window) -> tuple[str, str, Sequence[Candidate]]:
    """(qid, query, candidates) of a window item; a (query, candidates) pair gets qid "q"."""
    return (item[0], item[1], item[2]) if len(item) == 3 else ("q", item[0], item[1])  # type: ignore[misc]


def sliding_windows(n: int, window: int, stride: int) -> list[tuple[int, int]]:
    """Back-to-front windows [start, end): for n=100, w=20, s=10 -> [80,100), [70,90), ..., [0,20).

    Same schedule as RankGPT/FIRST (9 windows for 100/20/10), except that it stops once a window
    reaches the top instead of emitting RankGPT's extra clipped windows (e.g. [0,5) for n=25).
    """
    if n <= window:
        return [(0, n)]
    out = []
    end, start = n, n - window
    while True:
        out.append((start, end))
        if start == 0:
            return out
        end -= stride
        start = max(0, start - stride)


def monotone_scores(raw: Sequence[float], step: float = SCORE_STEP) -> list[float]:
    """The score rule's last step: keep the order, cap each score at the one above minus `step`."""
    out: list[float] = []
    for r in raw:
        out.append(float(r) if not out else min(float(r), out[-1] - step))
    return out


def final_scores(order: Sequence[str], raw: dict[str, float]) -> list[tuple[str, float]]:
    """(docid, score) best-first: the last window's score made strictly decreasing (score rule);
    rank-derived n..1 when the model gave no scores (generate mode, a single candidate)."""
    if not order or any(d not in raw for d in order):
        return [(d, float(len(order) - i)) for i, d in enumerate(order)]
    return list(zip(order, monotone_scores([raw[d] for d in order])))
