"""Reranking a first-stage TREC run (or rank_llm requests) as files: what `lrt rerank` reads and writes.

Every query and document the run names must have text. With `on_missing="skip"` they are counted
and kept in first-stage order rather than dropped: dropping a query or document would silently
change what trec_eval averages over. Output per query: the reranked top-k with the model's scores
(the score rule of `lrt.rerank`), then top-k documents without text (skip mode), then the rest of
the run in first-stage order, scored 1, 2, ... below the last reranked one: scores are unique and
decreasing. An output path ending in .jsonl is written as rank_llm results (`lrt.data.rank_llm`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lrt.data.schema import Candidate
from lrt.errors import DataError, LrtError
from lrt.io.atomic import atomic_write
from lrt.io.trec import read_corpus_subset, read_run, read_topics
from lrt.ranking.windows import Query


@dataclass
class Plan:
    """What to rerank, and what stays in first-stage order (with the reason counted)."""

    queries: list[Query] = field(default_factory=list)
    head_kept: dict[str, list[str]] = field(default_factory=dict)  # top-k docids without text
    tail: dict[str, list[str]] = field(default_factory=dict)  # beyond top-k, first-stage order
    order: list[str] = field(default_factory=list)  # qids in run order
    skipped_queries: list[str] = field(default_factory=list)
    skipped_docs: int = 0
    query_text: dict[str, str] = field(default_factory=dict)
    docs: dict[str, dict[str, Any]] = field(default_factory=dict)  # rank_llm `doc` objects, for JSONL output


def plan_inputs(run_path: str, topics_path: str, corpus_path: str, top_k: int, on_missing: str) -> Plan:
    """Join run, topics and corpus; raise one DataError listing what is missing, or count skips."""
    run, topics = read_run(run_path), read_topics(topics_path)
    needed = {d for docs in run.values() for d, _ in docs[:top_k]}
    corpus = read_corpus_subset(corpus_path, needed)  # streamed: only the docids the run needs are kept
    missing_q = [q for q in run if q not in topics]
    missing_d = sorted({d for q, docs in run.items() for d, _ in docs[:top_k] if d not in corpus})
    if on_missing == "error" and (missing_q or missing_d):
        parts = []
        if missing_q:
            parts.append(f"{len(missing_q)} run queries are not in {topics_path} (e.g. {missing_q[:3]})")
        if missing_d:
            parts.append(f"{len(missing_d)} top-{top_k} docids of {run_path} are not in {corpus_path} "
                         f"(e.g. {missing_d[:3]})")
        raise DataError("; ".join(parts) + ": give the matching topics/corpus files, or pass --on-missing skip to "
                        "count them and keep them in first-stage order")
    plan = Plan(order=list(run), query_text=dict(topics))
    for qid, docs in run.items():
        ids = [d for d, _ in docs]
        plan.tail[qid] = ids[top_k:]
        if qid not in topics:
            plan.skipped_queries.append(qid)
            plan.head_kept[qid] = ids[:top_k]
            continue
        head = [d for d in ids[:top_k] if d in corpus]
        plan.head_kept[qid] = [d for d in ids[:top_k] if d not in corpus]
        plan.skipped_docs += len(plan.head_kept[qid])
        cands = [Candidate(d, corpus[d]["text"], corpus[d].get("title")) for d in head]
        plan.queries.append((qid, topics[qid], cands))
        for d in head:
            plan.docs[d] = {k: v for k, v in corpus[d].items() if k in ("text", "title") and v is not None}
    return plan


def plan_requests(path: str, top_k: int) -> Plan:
    """rank_llm requests: each request's candidates in order, the first `top_k` reranked."""
    from lrt.data.rank_llm import read_requests

    plan = Plan()
    for req in read_requests(path):
        plan.order.append(req.qid)
        plan.query_text[req.qid] = req.query
        head = req.candidates[:top_k]
        plan.queries.append((req.qid, req.query, [c.candidate for c in head]))
        plan.head_kept[req.qid] = []
        plan.tail[req.qid] = [c.docid for c in req.candidates[top_k:]]
        for c in req.candidates:
            plan.docs[c.docid] = c.doc
    return plan


def check_output_path(path: str, flag: str) -> None:
    """Fail before any work if `path` cannot be written: a directory, or under a file / unwritable dir."""
    p = Path(path)
    if p.is_dir():
        raise LrtError(f"{flag} {path}: is a directory; give a file path (e.g. {p / 'out.trec'})")
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise LrtError(f"{flag} {path}: {parent} is not a directory; give a path under a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise LrtError(f"{flag} {path}: {parent} is not writable; choose another location")


def same_file(a: str, b: str) -> bool:
    """The same file: one path, or one file through a symlink or a hard link."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def check_export(path: str, flag: str = "--model") -> None:
    """lrt_reranker.json parses and the tokenizer files are there (cheap; before reading any input)."""
    from lrt.ranking import TOKENIZER_FILES, RerankerMeta

    if not Path(path).is_dir():
        raise LrtError(f"{flag} {path}: not a directory; give an exported model (`lrt export` / RUN_DIR/final)")
    RerankerMeta.load(path)
    if not any(Path(path, f).exists() for f in TOKENIZER_FILES):
        raise LrtError(f"{flag} {path}: no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}): the export is "
                       "incomplete; re-export with `lrt export RUN_DIR --out DIR`")
    if flag == "--model" and any(Path(path).glob("*.safetensors")):  # hf backend: the weights load here
        from lrt.io.weights import check_weights

        check_weights(Path(path))


def scored_lines(qid: str, ranked: list[tuple[str, float]], rest: list[str], tag: str) -> list[str]:
    """TREC lines: the reranked docs with their scores, then `rest` at 1, 2, ... below the last one."""
    pairs = list(ranked)
    low = pairs[-1][1] if pairs else float(len(rest) + 1)
    pairs += [(d, low - i) for i, d in enumerate(rest, 1)]
    for d in (qid, *(d for d, _ in pairs)):
        if not isinstance(d, str) or d.split() != [d]:
            raise DataError(f"query {qid!r}: id {d!r} must be a non-empty string without whitespace (TREC files are "
                            "whitespace-separated)")
    lines = [f"{qid} Q0 {d} {r} {s:.6f} {tag}\n" for r, (d, s) in enumerate(pairs, 1)]
    return lines


def merged(plan: Plan, ranked: dict[str, list[tuple[str, float]]]) -> dict[str, list[tuple[str, float]]]:
    """Every query's final list with scores: reranked, kept-without-text, tail (strictly decreasing)."""
    out: dict[str, list[tuple[str, float]]] = {}
    for qid in plan.order:
        head = list(ranked.get(qid, []))
        rest = plan.head_kept.get(qid, []) + plan.tail.get(qid, [])
        low = head[-1][1] if head else float(len(rest) + 1)
        out[qid] = head + [(d, low - i) for i, d in enumerate(rest, 1)]
    return out


def write_output(path: str, plan: Plan, final: dict[str, list[tuple[str, float]]], tag: str) -> None:
    if path.endswith(".jsonl"):
        from lrt.data.rank_llm import write_results

        write_results(path, [(qid, plan.query_text.get(qid, ""), [(d, s, plan.docs.get(d, {})) for d, s in final[qid]])
                             for qid in plan.order])
        return
    if not isinstance(tag, str) or tag.split() != [tag]:
        raise DataError(f"{path}: run tag {tag!r} must be non-empty and contain no whitespace")
    lines: list[str] = []
    for qid in plan.order:
        lines += scored_lines(qid, final[qid], [], tag)
    atomic_write(path, lambda fh: fh.write("".join(lines).encode("utf-8")))
