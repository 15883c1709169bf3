"""Complete listwise labels from a window teacher: sliding-window schedules and the label builder.

One back-to-front pass (RankGPT) only guarantees the top `stride` positions (it behaves like one
bubble-sort pass), so a complete label over N candidates needs several passes
(fullrank-ltr-eval-anchor.md A.1). Both published readings are implemented:

- `freeze_prefix`: pass k re-ranks only positions [(k-1)*stride, N), the prefix fixed by earlier
  passes is frozen; w=20, s=10, N=100 needs 9 passes = 45 teacher calls.
- `full_repass`: every pass re-slides the whole list, as fullrank's released code does;
  9 passes = 81 calls (~1.8x the cost) but the head is re-judged each pass, which may help a
  noisy teacher.
- `single_pass`: one pass (9 calls); positions after the first `stride` are not a real label.

Windows within a query depend on each other, but the same *step* of all queries does not, so the
builder asks the teacher for one batch per step across queries (batched local generation,
concurrent API calls). Every window call is recorded for auditing.
"""
from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal, Sequence

from lrt.data.schema import ListwiseExample
from lrt.prep.teachers import Teacher, WindowRequest

Mode = Literal["single_pass", "freeze_prefix", "full_repass"]
log = logging.getLogger("lrt.prep")


def one_pass(n: int, window: int, stride: int, start: int = 0) -> list[tuple[int, int]]:
    """Back-to-front windows [a, b) over positions [start, n).

    Same windows as RankGPT/rank_llm `sliding_windows` when (n - start - window) is a multiple of
    `stride`; otherwise the last window is clamped to `start` and the loop stops there (rank_llm
    would add one more redundant window, e.g. [0, 5) right after [0, 15)).
    """
    if n - start <= window:
        return [(start, n)] if n - start > 0 else []
    out: list[tuple[int, int]] = []
    a = n - window
    while True:
        out.append((max(a, start), a + window))
        if a <= start:
            return out
        a -= stride


def passes_needed(n: int, window: int, stride: int) -> int:
    """Passes after which a consistent teacher has fixed the whole list (9 for 100/20/10)."""
    return 1 if n <= window else math.ceil((n - window) / stride) + 1


def schedule(n: int, window: int, stride: int, mode: Mode, num_passes: int | None = None) -> list[tuple[int, int, int]]:
    """All (pass, start, end) window calls for one list of `n`, in the order they must run."""
    if not 0 < stride < window:
        raise ValueError(f"need 0 < stride < window (got window={window}, stride={stride})")
    passes = 1 if mode == "single_pass" else (num_passes or passes_needed(n, window, stride))
    out: list[tuple[int, int, int]] = []
    for p in range(passes):
        start = p * stride if mode == "freeze_prefix" else 0
        if start >= n:
            break
        out.extend((p, a, b) for a, b in one_pass(n, window, stride, start))
        if mode == "freeze_prefix" and n - start <= window:
            break  # the single window just sorted the whole remaining tail: the list is complete
    return out


@dataclass
class WindowCall:
    """One row of the call log: which docids the teacher saw, what it said, what was repaired."""

    qid: str
    step: int
    pass_index: int
    start: int
    end: int
    docids: list[str]
    raw: str | None
    order: list[int] | None
    duplicates: int
    out_of_range: int
    missing: int
    valid: bool
    cached: bool
    error: str | None


@dataclass
class BuildResult:
    rankings: dict[str, list[str]]  # qid -> complete ranking (failed queries absent)
    calls: list[WindowCall]
    failed: dict[str, str] = field(default_factory=dict)  # qid -> error of the window that failed
    counts: Counter = field(default_factory=Counter)
    # qid -> the teacher's per-candidate scores (display order), for lists ranked in ONE window whose
    # answer carried `meta["scores"]` (an LLM teacher's first-token log-probs, comparable within a prompt)
    scores: dict[str, list[float]] = field(default_factory=dict)


def build_labels(
    examples: Sequence[ListwiseExample],
    teacher: Teacher,
    *,
    window: int = 20,
    stride: int = 10,
    mode: Mode = "freeze_prefix",
    num_passes: int | None = None,
    record_calls: bool = True,
) -> BuildResult:
    """Rank every example's candidates (starting from display order) with windowed teacher calls.

    A window the teacher never answered (retries exhausted) stops that query: it is reported in
    `failed`, its answered windows stay in the cache, and a re-run resumes it.
    """
    qids = [ex.qid for ex in examples]
    if len(set(qids)) != len(qids):
        raise ValueError(f"duplicate qids {sorted({q for q in qids if qids.count(q) > 1})[:5]}: rankings are per qid")
    plans = [schedule(len(ex.candidates), window, stride, mode, num_passes) for ex in examples]
    orders = [list(range(len(ex.candidates))) for ex in examples]
    texts = [tuple(c.text if c.title is None else f"{c.title}: {c.text}" for c in ex.candidates) for ex in examples]
    ids = [tuple(c.docid for c in ex.candidates) for ex in examples]
    alive = [True] * len(examples)
    res = BuildResult({}, [])
    c = res.counts
    from lrt.progress import Progress

    bar = Progress(sum(len(p) for p in plans), "prep", unit="window")  # not 45 INFO lines of window steps
    for step in range(max((len(p) for p in plans), default=0)):
        live = [q for q in range(len(examples)) if alive[q] and step < len(plans[q])]
        if not live:
            break
        reqs = []
        for q in live:
            _, a, b = plans[q][step]
            seg = orders[q][a:b]
            idq, tq = ids[q], texts[q]
            reqs.append(WindowRequest(examples[q].qid, examples[q].query, tuple([idq[i] for i in seg]),
                                      tuple([tq[i] for i in seg])))
        resps = teacher.rank_windows(reqs)
        for q, req, resp in zip(live, reqs, resps):
            p, a, b = plans[q][step]
            c["calls"] += 1
            c["cache_hits"] += resp.cached
            parsed = resp.parsed
            if parsed is None:
                alive[q] = False
                res.failed[examples[q].qid] = resp.error or "no answer"
                c["failed_calls"] += 1
            else:
                seg = orders[q][a:b]
                orders[q][a:b] = [seg[i] for i in parsed.order]
                c["duplicates"] += parsed.duplicates
                c["out_of_range"] += parsed.out_of_range
                c["missing"] += parsed.missing
                c["invalid_responses"] += not parsed.valid
                c["refused"] += not parsed.extracted  # no identifier at all: a refusal, not a ranking
                one_window = len(plans[q]) == 1 and (a, b) == (0, len(orders[q]))
                if one_window and resp.meta.get("scores") is not None:  # window order = display order
                    res.scores[examples[q].qid] = [float(x) for x in resp.meta["scores"]]
            if record_calls:
                res.calls.append(WindowCall(
                    req.qid, step, p, a, b, list(req.docids), resp.raw, parsed.order if parsed else None,
                    parsed.duplicates if parsed else 0, parsed.out_of_range if parsed else 0,
                    parsed.missing if parsed else 0, bool(parsed and parsed.valid), resp.cached, resp.error))
        log.debug("step %d: %d windows (%d cached, %d failed so far)", step + 1, len(reqs),
                  sum(r.cached for r in resps), c["failed_calls"])
        bar.set_postfix(cached=c["cache_hits"], failed=c["failed_calls"])
        bar.update(len(reqs))
    bar.close()
    for q, ex in enumerate(examples):
        if alive[q]:
            res.rankings[ex.qid] = [ids[q][i] for i in orders[q]]
    c["queries"] = len(examples)
    c["failed_queries"] = len(res.failed)
    return res
