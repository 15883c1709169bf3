"""The teacher interface, shared request/response types, and the `scores` teacher.

A teacher ranks a *batch* of windows at once (`rank_windows`): the label builder sends every query's
window for the same step together, so a local model can batch across queries and a remote API can
run them concurrently. Teachers return the raw text they produced plus its parse through the one
shared parser (`lrt.data.parse`), so a score-based teacher and an LLM go through identical repair
logic and their call logs look the same.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

from lrt.data.parse import ParsedPermutation, format_permutation, parse_permutation
from lrt.data.prompts import Scheme, escape_passage, identifier_labels
from lrt.errors import DataError

OnResponse = Callable[[int, "WindowResponse"], None]


@dataclass(frozen=True)
class WindowRequest:
    """One window of one query: the candidates in their current order (texts may include titles)."""

    qid: str
    query: str
    docids: tuple[str, ...]
    passages: tuple[str, ...]


@dataclass
class WindowResponse:
    """What the teacher said about one window; `error` set (and `parsed` None) if it never answered."""

    raw: str | None
    parsed: ParsedPermutation | None
    error: str | None = None
    cached: bool = False
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. token usage, attempts

    @property
    def order(self) -> list[int] | None:
        """0-based window indices, best first (a complete permutation), or None if unanswered."""
        return self.parsed.order if self.parsed is not None else None


class Teacher(Protocol):
    kind: str
    scheme: Scheme

    def describe(self) -> dict[str, Any]:
        """Provenance for the card (model, prompt, decoding); never secrets."""

    def cache_key(self, req: WindowRequest) -> str:
        """Hash of everything that determines the answer (teacher, model, exact prompt/window)."""

    def rank_windows(self, requests: Sequence[WindowRequest], on_response: OnResponse | None = None) -> list[WindowResponse]:
        """Answer every request; call `on_response(i, resp)` as soon as answer i exists (for the cache)."""

    def stats(self) -> dict[str, int]:
        """Counters such as retries by reason; summed into the card."""


def stable_hash(obj: Any) -> str:
    """sha256 of canonical JSON: identical inputs give identical cache keys across processes."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def response_from_raw(raw: str, n: int, scheme: Scheme, **meta: Any) -> WindowResponse:
    """Parse raw teacher text for a window of `n` with the shared RankGPT repair rules."""
    return WindowResponse(raw, parse_permutation(raw, identifier_labels(scheme, n)), meta=dict(meta))


def truncate_words(text: str, max_words: int | None) -> str:
    """RankGPT-style passage budget: the first `max_words` whitespace-separated words."""
    if max_words is None:
        return text
    words = text.split()
    return text if len(words) <= max_words else " ".join(words[:max_words])


def prepare_passages(passages: Iterable[str], max_words: int | None, escape: str = "lrt") -> list[str]:
    """Truncate then escape identifier look-alikes (`escape`: the template's style), exactly as the
    shared renderer expects."""
    return [escape_passage(truncate_words(p, max_words), escape) for p in passages]


class ScoresTeacher:
    """Ranks a window by known per-(qid, docid) scores (a cross-encoder run, qrels, a final ranking).

    Ties keep the current order (a stable sort), so a label built from coarse grades never moves
    documents the scores cannot tell apart. Documents without a score sink below all scored ones
    (`missing_scores` counts them). Its raw text is the canonical `[C] > [A] > ...` string so the
    same parser and call log apply. With qrels, pass `missing_score=0` (unjudged = non-relevant,
    the TREC convention) so unjudged documents tie with judged-irrelevant ones. `delay_s` simulates a slow teacher (tests of kill-and-resume).
    """

    kind = "scores"

    def __init__(self, scores: Mapping[str, Mapping[str, float]], *, source: str, scheme: Scheme = "numeric",
                 delay_s: float = 0.0, missing_score: float | None = None) -> None:
        self.scores = scores
        self.missing_score = -math.inf if missing_score is None else missing_score
        self.source = source
        self.scheme = scheme
        self.delay_s = delay_s
        self._missing = 0
        self._calls = 0

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": f"scores:{self.source}", "identifiers": self.scheme}

    def cache_key(self, req: WindowRequest) -> str:
        return stable_hash([self.kind, self.source, self.scheme, self.missing_score if math.isfinite(self.missing_score)
                            else None, req.qid, list(req.docids)])

    def rank_windows(self, requests: Sequence[WindowRequest], on_response: OnResponse | None = None) -> list[WindowResponse]:
        out: list[WindowResponse] = []
        labels_by_n: dict[int, list[str]] = {}
        for i, req in enumerate(requests):
            if self.delay_s:
                time.sleep(self.delay_s)
            n = len(req.docids)
            labels = labels_by_n.get(n) or labels_by_n.setdefault(n, identifier_labels(self.scheme, n))
            table = self.scores.get(req.qid, {})
            sc = [table.get(d) for d in req.docids]
            if None in sc:
                self._missing += sc.count(None)
                sc = [self.missing_score if x is None else x for x in sc]
            # stable sort, also with reverse=True: equal scores keep the current window order
            order = sorted(range(n), key=sc.__getitem__, reverse=True)
            raw = format_permutation(order, labels)
            resp = WindowResponse(raw, parse_permutation(raw, labels))
            self._calls += 1
            out.append(resp)
            if on_response is not None:
                on_response(i, resp)
        return out

    def stats(self) -> dict[str, int]:
        return {"teacher_calls": self._calls, "missing_scores": self._missing}

    def list_scores(self, qid: str, docids: Sequence[str]) -> list[float] | None:
        """Each candidate's score (display order), for score distillation; None when one has no score
        (a run that did not retrieve it): a made-up score would be a fake target."""
        table = self.scores.get(qid, {})
        sc = [table.get(d, self.missing_score) for d in docids]
        return [float(x) for x in sc] if all(math.isfinite(x) for x in sc) else None


def load_scores(path: str, fmt: str) -> dict[str, dict[str, float]]:
    """Per-query scores from a TREC run (score column), qrels (grade) or fullrank JSONL (-position)."""
    from lrt.io import trec

    if fmt == "run":
        return {q: dict(pairs) for q, pairs in trec.read_run(path).items()}
    if fmt == "qrels":
        return {q: {d: float(g) for d, g in docs.items()} for q, docs in trec.read_qrels(path).items()}
    if fmt == "fullrank":
        from lrt.prep.importers import iter_fullrank_rows

        return {row["qid"]: {d: -float(i) for i, d in enumerate(row["final_list"])}
                for _, _, row in iter_fullrank_rows(path)}
    raise DataError(f"{path}: unknown scores format {fmt!r}; use run, qrels or fullrank")
