"""rank_llm interop: its request/result JSONL, and what rank_llm needs to serve an lrt export.

Schema (castorini/rank_llm 0.25, `rank_llm.data`: `Request`, `Result`, `read_requests_from_file`,
`DataWriter.write_in_jsonl_format`), one object per line:

    {"query": {"text": str, "qid": str|int},
     "candidates": [{"docid": str|int, "score": float, "doc": {"text"|"segment"|"contents"|"content"|"body"|"passage": str,
                                                               "title": str?, ...}}, ...]}

Requests list candidates in first-stage order; results list them best-first. rank_llm reads the
passage from the first of text/segment/contents/content/body/passage (that order) plus an optional
title; so does `read_requests`. `write_results` writes lrt's scores (strictly decreasing) into
`score` and hands each `doc` back unchanged, so rank_llm's own reader loads the file.
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


def rank_llm_serving(template: dict[str, Any], window: int, stride: int, max_length: int) -> dict[str, Any]:
    """What rank_llm (RankListwiseOSLLM / `Reranker.create_model_coordinator`) needs to serve an lrt
    export with the prompt it was trained on: a singleturn_listwise prompt template (the YAML
    fields of rank_llm's `prompt_templates/*.yaml`) rendered from lrt's template, and the FIRST
    settings (`use_logits`, `use_alpha`, window, stride, context size).

    `exact` says whether rank_llm will render the very same text: only for alpha/numeric
    identifiers, a passage line `[{id}] {text}`, and where rank_llm's own passage preprocessing
    (300 words, ftfy, "[n]" -> "(n)", "Title: ... Content: ...") matches the template (the
    `rank_llm` prompt preset); otherwise `differences` lists what rank_llm would change.
    """
    scheme = template.get("identifiers", "alpha")
    passage = str(template.get("passage", "[{id}] {text}\n"))
    body = passage.replace("{id}", "{rank}").replace("{text}", "{candidate}")
    diffs = []
    if scheme == "special":
        diffs.append("special identifiers <id_k> (rank_llm knows only letters or numbers)")
    if passage.rstrip("\n") != "[{id}] {text}":
        diffs.append(f"passage line {passage!r} (rank_llm writes '[{{rank}}] {{candidate}}')")
    if template.get("chat_template", "auto") == "none":
        diffs.append("chat_template none (rank_llm always applies the tokenizer's chat template)")
    if template.get("system_in_user"):
        diffs.append("system_in_user (rank_llm sends the system message as a system turn)")
    if template.get("passage_preprocessing") != "rank_llm":  # a template that replicates rank_llm's may say so
        diffs.append("passage preprocessing: rank_llm cuts passages to 300 words, applies ftfy and writes titles as "
                     "'Title: ... Content: ...'; lrt cuts to max_passage_tokens tokens and writes 'title: text'")
    tpl = {
        "method": "singleturn_listwise",
        "system_message": template.get("system") or "",
        "prefix": template.get("prefix", ""),
        "body": body,
        "suffix": template.get("suffix", ""),
        "output_validation_regex": r"^\[[A-Z]\]( > \[[A-Z]\])*$" if scheme == "alpha" else r"^\[\d+\]( > \[\d+\])*$",
        "output_extraction_regex": r"\[([A-Z])\]" if scheme == "alpha" else r"\[(\d+)\]",
    }
    return {
        "prompt_template": tpl,
        "use_logits": True,
        "use_alpha": scheme == "alpha",
        "window_size": window,
        "stride": stride,
        "context_size": max_length,
        "exact": not diffs,
        "differences": diffs,
        "command": ("python src/rank_llm/scripts/run_rank_llm.py --model_path=MODEL_DIR --prompt_template_path="
                    "MODEL_DIR/rank_llm_template.yaml --use_logits --context_size "
                    f"{max_length} --window_size {window} --stride {stride}" + (" --use_alpha" if scheme == "alpha" else "")),
    }


def write_rank_llm_template(out_dir: str | Path, serving: dict[str, Any]) -> Path:
    """`rank_llm_template.yaml` for rank_llm's `--prompt_template_path` (block scalars keep newlines)."""
    import yaml

    path = Path(out_dir, "rank_llm_template.yaml")
    text = yaml.safe_dump(serving["prompt_template"], sort_keys=False, allow_unicode=True, width=10_000)
    atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))
    return path
