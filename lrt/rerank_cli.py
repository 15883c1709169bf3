"""`lrt rerank`: rerank the top-k of a TREC run with an exported model; write a TREC run.

    lrt rerank --model DIR --run bm25.trec --queries topics.json --corpus corpus.tsv --out reranked.trec \
               [--mode first_token|full|generate] [--top-k 100] [--window 20 --stride 10] [--batch-size 8]

Inputs are read and cross-checked *before* the model loads, so a typo costs seconds, not a model
load. Every query and document the run names must have text. With `--on-missing skip` they are
counted, printed and kept in first-stage order rather than dropped: dropping a query or document
would silently change what trec_eval averages over. Output per query: the reranked top-k, then
top-k documents without text (skip mode), then the rest of the run in first-stage order; scores
are unique and decreasing (`lrt.io.trec.write_run`).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from lrt.data.schema import Candidate
from lrt.errors import DataError, LrtError
from lrt.io.trec import read_corpus, read_run, read_topics, write_run
from lrt.rerank import MODES, Query


@dataclass
class Plan:
    """What to rerank, and what stays in first-stage order (with the reason counted)."""

    queries: list[Query] = field(default_factory=list)
    head_kept: dict[str, list[str]] = field(default_factory=dict)  # top-k docids without text
    tail: dict[str, list[str]] = field(default_factory=dict)  # beyond top-k, first-stage order
    order: list[str] = field(default_factory=list)  # qids in run order
    skipped_queries: list[str] = field(default_factory=list)
    skipped_docs: int = 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lrt rerank", description="Rerank the top-k of a TREC run with an lrt model.")
    p.add_argument("--model", required=True, help="exported model directory (has lrt_reranker.json)")
    p.add_argument("--run", required=True, help="first-stage TREC run: qid Q0 docid rank score tag")
    p.add_argument("--queries", "--topics", dest="queries", required=True, help="qid<TAB>text TSV or JSON {qid: text}")
    p.add_argument("--corpus", required=True, help="docid<TAB>[title<TAB>]text TSV or JSONL with docid/text")
    p.add_argument("--out", required=True, help="output TREC run")
    p.add_argument("--mode", choices=MODES, default="first_token")
    p.add_argument("--top-k", type=int, default=100, help="rerank this many documents per query (default 100)")
    p.add_argument("--window", type=int, default=None, help="window size (default: the model's lrt_reranker.json)")
    p.add_argument("--stride", type=int, default=None, help="window stride (default: the model's lrt_reranker.json)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward/generate call")
    p.add_argument("--max-length", type=int, default=None, help="token budget per window (passages shrink to fit)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    p.add_argument("--tag", default=None, help="run tag (default lrt-MODE)")
    p.add_argument("--on-missing", choices=("error", "skip"), default="error",
                   help="queries/documents without text: error (default) or count, print and keep in first-stage order")
    p.add_argument("--stats", default=None, help="also write the reranking statistics as JSON here")
    return p


def plan_inputs(run_path: str, topics_path: str, corpus_path: str, top_k: int, on_missing: str) -> Plan:
    """Join run, topics and corpus; raise one DataError listing what is missing, or count skips."""
    run, topics, corpus = read_run(run_path), read_topics(topics_path), read_corpus(corpus_path)
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
    plan = Plan(order=list(run))
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
    return plan


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    if a.top_k < 1:
        raise LrtError(f"--top-k must be >= 1 (got {a.top_k})")
    if a.batch_size < 1:
        raise LrtError(f"--batch-size must be >= 1 (got {a.batch_size})")
    plan = plan_inputs(a.run, a.queries, a.corpus, a.top_k, a.on_missing)
    if plan.skipped_queries or plan.skipped_docs:
        print(f"skipped (--on-missing skip): {len(plan.skipped_queries)} queries not in {a.queries} (kept in "
              f"first-stage order), {plan.skipped_docs} top-{a.top_k} documents not in {a.corpus} (placed after the "
              "reranked documents of their query)")
    from lrt.rerank import Reranker

    rr = Reranker.from_pretrained(a.model, device=a.device, dtype=a.dtype, mode=a.mode, window=a.window,
                                  stride=a.stride, batch_size=a.batch_size, max_length=a.max_length)
    ranked = rr.rerank_many(plan.queries)
    st = rr.last_stats
    out = {qid: [d for d, _ in ranked.get(qid, [])] + plan.head_kept[qid] + plan.tail[qid] for qid in plan.order}
    write_run(a.out, out, a.tag or f"lrt-{a.mode}")
    n = max(1, len(plan.queries))
    print(f"reranked {len(plan.queries)} queries (mode {a.mode}, top-{a.top_k}, window {rr.window}, stride "
          f"{rr.stride}) in {st.seconds:.1f} s ({1000 * st.seconds / n:.0f} ms/query, {st.windows} windows); wrote {a.out}")
    if st.valid_share is not None:
        print(f"generate: {st.valid}/{st.windows} outputs were valid permutations ({100 * st.valid_share:.1f}%); "
              f"repaired: {st.duplicates} duplicate, {st.out_of_range} out-of-range, {st.missing} missing identifiers")
    if a.stats:
        rec = {**st.to_dict(), "skipped_queries": len(plan.skipped_queries), "skipped_docs": plan.skipped_docs}
        Path(a.stats).write_text(json.dumps(rec, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
