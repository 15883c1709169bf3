"""rank_llm interop: read and write its request/result JSONL (`lrt rerank --requests ... --out x.jsonl`).

Schema (castorini/rank_llm 0.25, `rank_llm.data`: `Request`, `Result`, `read_requests_from_file`,
`DataWriter.write_in_jsonl_format`), one object per line:

    {"query": {"text": str, "qid": str|int},
     "candidates": [{"docid": str|int, "score": float, "doc": {"text"|"segment"|"contents"|"content"|"body"|"passage": str,
                                                               "title": str?, ...}}, ...]}

Requests list candidates in first-stage order; results list them best-first. rank_llm reads the
passage from the first of text/segment/contents/content/body/passage (that order) plus an optional
title; so does `read_requests`. `write_results` writes lrt's scores (strictly decreasing) into
`score` and hands each `doc` back unchanged, so rank_llm's own reader loads the file. What rank_llm
needs to *serve* an lrt export with the same prompt is in the export's `lrt_reranker.json`
(`rank_llm`, from `lrt.data.prompts.rank_llm_serving`) and its model card.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from lrt.data.schema import Candidate
from lrt.errors import DataError
from lrt.io.atomic import atomic_write

DOC_TEXT_KEYS = ("text", "segment", "contents", "content", "body", "passage")  # rank_llm's order


@dataclass
class RLCandidate:
    docid: str
    score: float
    doc: dict[str, Any]
    candidate: Candidate


@dataclass
class RLRequest:
    qid: str
    query: str
    candidates: list[RLCandidate]


def _id(v: Any, what: str, where: str) -> str:
    if isinstance(v, bool) or not isinstance(v, (str, int)) or not str(v).strip():
        raise DataError(f"{where}: {what} must be a non-empty string or integer (got {v!r})")
    s = str(v).strip()
    if s.split() != [s]:
        raise DataError(f"{where}: {what} {s!r} contains whitespace; TREC ids cannot")
    return s


def _candidate(c: Any, where: str) -> RLCandidate:
    if not isinstance(c, dict) or "docid" not in c or not isinstance(c.get("doc"), dict):
        raise DataError(f"{where}: each candidate needs docid and a doc object ({{\"docid\": ..., \"score\": ..., "
                        "\"doc\": {\"text\": ...}}})")
    docid = _id(c["docid"], "docid", where)
    doc = c["doc"]
    key = next((k for k in DOC_TEXT_KEYS if isinstance(doc.get(k), str)), None)
    if key is None:
        raise DataError(f"{where}: candidate {docid!r} has no passage text (doc needs one of {', '.join(DOC_TEXT_KEYS)})")
    score = c.get("score", 0.0)
    try:
        score = float(score if score is not None else 0.0)
    except (TypeError, ValueError):
        raise DataError(f"{where}: candidate {docid!r}: score {score!r} is not a number") from None
    if not math.isfinite(score):
        raise DataError(f"{where}: candidate {docid!r}: score {score!r} is not finite")
    title = doc.get("title") if isinstance(doc.get("title"), str) and doc.get("title") else None
    return RLCandidate(docid, score, doc, Candidate(docid, doc[key], title))


def read_requests(path: str | Path) -> list[RLRequest]:
    """rank_llm request JSONL (or a JSON list of requests) -> requests; errors name file:line and the fix."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{path}: file not found (or not a regular file); check the path")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 ({e.reason}); re-encode the file as UTF-8") from None
    if text.lstrip().startswith("["):  # rank_llm also reads a .json list
        try:
            rows = [(i, r) for i, r in enumerate(json.loads(text), 1)]
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
        where = lambda i: f"{path}: request {i}"  # noqa: E731
    else:
        rows = []
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append((i, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{i}: invalid JSON ({e.msg}); each line is one rank_llm request "
                                    '{"query": {...}, "candidates": [...]}') from None
        where = lambda i: f"{path}:{i}"  # noqa: E731
    out: list[RLRequest] = []
    seen: dict[str, str] = {}
    for i, r in rows:
        w = where(i)
        q = r.get("query") if isinstance(r, dict) else None
        if not isinstance(q, dict) or not isinstance(q.get("text"), str) or "qid" not in q:
            raise DataError(f"{w}: expected {{\"query\": {{\"qid\": ..., \"text\": ...}}, \"candidates\": [...]}} "
                            "(rank_llm's Request)")
        qid = _id(q["qid"], "query qid", w)
        if qid in seen:
            raise DataError(f"{w}: query {qid!r} repeats {seen[qid]}; give each query once")
        seen[qid] = w
        if not q["text"].strip():
            raise DataError(f"{w}: query {qid!r} has empty text")
        cands = r.get("candidates")
        if not isinstance(cands, list):
            raise DataError(f"{w}: candidates must be a list")
        rc = [_candidate(c, w) for c in cands]
        ids = [c.docid for c in rc]
        if len(set(ids)) != len(ids):
            dup = next(d for k, d in enumerate(ids) if d in ids[:k])
            raise DataError(f"{w}: query {qid!r}: candidate {dup!r} appears twice; list each document once")
        out.append(RLRequest(qid, q["text"].strip(), rc))
    if not out:
        raise DataError(f"{path}: no requests; expected one rank_llm request per line")
    return out


def _jsonl(rows: Iterable[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def write_results(path: str | Path, results: Sequence[tuple[str, str, Sequence[tuple[str, float, dict[str, Any]]]]]) -> None:
    """rank_llm result JSONL: per query (qid, query text, [(docid, score, doc)] best-first)."""
    rows = [{"query": {"text": text, "qid": qid},
             "candidates": [{"docid": d, "score": float(s), "doc": doc} for d, s, doc in cands]}
            for qid, text, cands in results]
    atomic_write(path, lambda fh: fh.write(_jsonl(rows)))


def write_requests(path: str | Path, requests: Sequence[tuple[str, str, Sequence[tuple[Candidate, float]]]]) -> None:
    """rank_llm request JSONL from (qid, query, [(candidate, first-stage score)]) in first-stage order."""
    rows = [{"query": {"text": q, "qid": qid},
             "candidates": [{"docid": c.docid, "score": float(s),
                             "doc": {"text": c.text, **({"title": c.title} if c.title else {})}} for c, s in cands]}
            for qid, q, cands in requests]
    atomic_write(path, lambda fh: fh.write(_jsonl(rows)))
