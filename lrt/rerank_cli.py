"""`lrt rerank`: rerank the top-k of a TREC run (or rank_llm requests) with an exported model.

    lrt rerank --model DIR --run bm25.trec --queries topics.json --corpus corpus.tsv --out reranked.trec \
               [--mode first_token|full|generate|pointwise] [--top-k 100] [--window 20 --stride 10] [--batch-size 8]
    lrt rerank --backend openai --base-url http://localhost:8000/v1 --model SERVED_NAME --export DIR ...
    lrt rerank --model DIR --requests requests.jsonl --out results.jsonl        # rank_llm interop
    lrt rerank --model DIR ... --nproc-per-node 4                               # queries sharded by torchrun

Inputs, output paths, the device and the export are checked *before* the model loads, so a typo
costs seconds, not a model load (or a whole reranking run). Every query and document the run
names must have text. With `--on-missing skip` they are counted, printed and kept in first-stage
order rather than dropped: dropping a query or document would silently change what trec_eval
averages over. Output per query: the reranked top-k with the model's scores (the score rule of
`lrt.rerank`), then top-k documents without text (skip mode), then the rest of the run in
first-stage order, scored 1, 2, ... below the last reranked one: scores are unique and decreasing.
An output path ending in .jsonl is written as rank_llm results (`lrt.io.rank_llm`).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lrt.data.schema import Candidate
from lrt.errors import DataError, LrtError
from lrt.io.atomic import atomic_write
from lrt.io.trec import read_corpus_subset, read_run, read_topics
from lrt.rerank import BACKENDS, MODES, Query

ARGV_ENV = "LRT_RERANK_ARGV"


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lrt rerank", description="Rerank the top-k of a TREC run with an lrt model.")
    p.add_argument("--model", required=True,
                   help="exported model directory (has lrt_reranker.json); with --backend openai: the served model name")
    p.add_argument("--run", default=None, help="first-stage TREC run: qid Q0 docid rank score tag")
    p.add_argument("--queries", "--topics", dest="queries", default=None, help="qid<TAB>text TSV or JSON {qid: text}")
    p.add_argument("--corpus", default=None, help="docid<TAB>[title<TAB>]text TSV or JSONL with docid/text")
    p.add_argument("--requests", default=None,
                   help="rank_llm request JSONL ({query: {qid, text}, candidates: [{docid, score, doc}]}) instead of "
                        "--run/--queries/--corpus")
    p.add_argument("--out", required=True, help="output TREC run, or rank_llm result JSONL when it ends in .jsonl")
    p.add_argument("--mode", choices=MODES, default=None,
                   help="default: pointwise for a pointwise export (lrt_reranker.json), else first_token")
    p.add_argument("--backend", choices=BACKENDS, default="hf",
                   help="hf: in-process; openai: an OpenAI-compatible completions server (vLLM, SGLang)")
    p.add_argument("--base-url", default=None, help="openai backend: API root, e.g. http://localhost:8000/v1")
    p.add_argument("--export", default=None,
                   help="openai backend: the exported model directory (tokenizer + lrt_reranker.json) that renders the "
                        "prompt (default: --model when it is a directory)")
    p.add_argument("--api-key-env", default=None, help="openai backend: environment variable holding the API key")
    p.add_argument("--concurrency", type=int, default=8, help="openai backend: parallel requests")
    p.add_argument("--max-retries", type=int, default=6,
                   help="openai backend: retries of a failed or malformed answer, with exponential backoff (default 6)")
    p.add_argument("--logprobs", type=int, default=None,
                   help="openai first_token/full, for a server without logprob_token_ids: top-k logprobs per "
                        "window (default 20, vLLM's default --max-logprobs)")
    p.add_argument("--prompt-format", choices=("text", "tokens"), default="text",
                   help="openai backend: send the rendered prompt as text (default) or as token ids")
    p.add_argument("--top-k", type=int, default=100, help="rerank this many documents per query (default 100)")
    p.add_argument("--window", type=int, default=None, help="window size (default: the model's lrt_reranker.json)")
    p.add_argument("--stride", type=int, default=None, help="window stride (default: the model's lrt_reranker.json)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward/generate call")
    p.add_argument("--max-length", type=int, default=None,
                   help="token budget per window, every mode (default: the model's lrt_reranker.json); passages shrink "
                        "to fit")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    p.add_argument("--tag", default=None, help="run tag (default lrt-MODE)")
    p.add_argument("--on-missing", choices=("error", "skip"), default="error",
                   help="queries/documents without text: error (default) or count, print and keep in first-stage order")
    p.add_argument("--stats", default=None, help="also write the reranking statistics as JSON here")
    p.add_argument("--nproc-per-node", type=int, default=1,
                   help="hf backend: shard the queries over N processes (torchrun) into one merged output")
    return p


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
    from lrt.io.rank_llm import read_requests

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


def _same_file(a: str, b: str) -> bool:
    """The same file: one path, or one file through a symlink or a hard link."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def check_paths_distinct(a: argparse.Namespace) -> None:
    """Before any work: every input a regular file, and no output the same file as an input (or as
    the other output): the output is written over it, and that input is lost."""
    from lrt.io.trec import not_a_file

    inputs = [(f, v) for f, v in (("--run", a.run), ("--queries", a.queries), ("--corpus", a.corpus),
                                  ("--requests", a.requests)) if v]
    for flag, path in inputs:
        if flag in ("--queries", "--corpus") and (Path(path) / f"{flag[2:]}.jsonl").is_file():
            continue  # a BEIR folder (queries.jsonl / corpus.jsonl inside): its files are checked when read
        if not Path(path).is_file():
            raise LrtError(f"{flag} {path}: {not_a_file(Path(path))}; give a regular file")
    outputs = [("--out", a.out)] + ([("--stats", a.stats)] if a.stats else [])
    for i, (oflag, out) in enumerate(outputs):
        for flag, path in inputs + outputs[i + 1:]:
            if _same_file(out, path):
                raise LrtError(f"{oflag} {out} is the same file as {flag} {path}: writing it would destroy that "
                               f"{'input' if (flag, path) in inputs else 'output'}; choose another {oflag} path")


def check_export(path: str, flag: str = "--model") -> None:
    """lrt_reranker.json parses and the tokenizer files are there (cheap; before reading any input)."""
    from lrt.rerank import TOKENIZER_FILES, RerankerMeta

    if not Path(path).is_dir():
        raise LrtError(f"{flag} {path}: not a directory; give an exported model (`lrt export` / RUN_DIR/final)")
    RerankerMeta.load(path)
    if not any(Path(path, f).exists() for f in TOKENIZER_FILES):
        raise LrtError(f"{flag} {path}: no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}): the export is "
                       "incomplete; re-export with `lrt export RUN_DIR --out DIR`")
    if flag == "--model" and any(Path(path).glob("*.safetensors")):  # hf backend: the weights load here
        from lrt.export_dir import check_weights

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
        from lrt.io.rank_llm import write_results

        write_results(path, [(qid, plan.query_text.get(qid, ""), [(d, s, plan.docs.get(d, {})) for d, s in final[qid]])
                             for qid in plan.order])
        return
    if not isinstance(tag, str) or tag.split() != [tag]:
        raise DataError(f"{path}: run tag {tag!r} must be non-empty and contain no whitespace")
    lines: list[str] = []
    for qid in plan.order:
        lines += scored_lines(qid, final[qid], [], tag)
    atomic_write(path, lambda fh: fh.write("".join(lines).encode("utf-8")))


def _relaunch(argv: list[str], nproc: int) -> int:
    """Run this same command under `torchrun --standalone` with N processes (see `lrt.launch`)."""
    from lrt.launch import dry_run

    rest, skip = [], False
    for i, x in enumerate(argv):
        if skip:
            skip = False
            continue
        if x == "--nproc-per-node":
            skip = True
            continue
        if x.startswith("--nproc-per-node="):
            continue
        rest.append(x)
    # the arguments travel in the environment: torchrun's own parser would take `--run` for its
    # `--run-path` (argparse abbreviations), even after the module name
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node",
           str(nproc), "-m", "lrt.rerank_cli"]
    if dry_run():
        print(f"{ARGV_ENV}={shlex.quote(json.dumps(rest))} {shlex.join(cmd)}")
        return 0
    env = dict(os.environ)
    env[ARGV_ENV] = json.dumps(rest)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, nproc))))
    env["LRT_RERANK_NPROC"] = str(nproc)
    try:
        return subprocess.call(cmd, env=env)
    except KeyboardInterrupt:
        return 130


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv and os.environ.get(ARGV_ENV) and "LOCAL_RANK" in os.environ:  # a torchrun worker of _relaunch
        argv = json.loads(os.environ[ARGV_ENV])
    a = build_parser().parse_args(argv)
    if a.top_k < 1:
        raise LrtError(f"--top-k must be >= 1 (got {a.top_k})")
    if a.batch_size < 1:
        raise LrtError(f"--batch-size must be >= 1 (got {a.batch_size})")
    if a.max_length is not None and a.max_length < 16:
        raise LrtError(f"--max-length must be >= 16 tokens (got {a.max_length})")
    if a.requests and (a.run or a.queries or a.corpus):
        raise LrtError("give either --requests (rank_llm JSONL) or --run/--queries/--corpus, not both")
    if not a.requests and not (a.run and a.queries and a.corpus):
        raise LrtError("give --run, --queries and --corpus (or --requests FILE.jsonl from rank_llm)")
    if a.nproc_per_node < 1:
        raise LrtError(f"--nproc-per-node must be >= 1 (got {a.nproc_per_node})")
    distributed = "LOCAL_RANK" in os.environ and os.environ.get("LRT_RERANK_NPROC")
    if a.backend == "openai":
        if not a.base_url:
            raise LrtError("--backend openai needs --base-url (e.g. http://localhost:8000/v1)")
        if a.nproc_per_node > 1:
            raise LrtError("--nproc-per-node is for the hf backend; the openai backend parallelises with --concurrency")
        export = a.export or (a.model if Path(a.model).is_dir() else None)
        if export is None:
            raise LrtError(f"--backend openai: --model {a.model!r} is the served model name, so give --export DIR (the "
                           "exported model directory whose tokenizer and lrt_reranker.json render the prompt)")
        check_export(export, "--export")
        a.mode = a.mode or "first_token"
    else:
        if a.base_url or a.export:
            raise LrtError("--base-url/--export are for --backend openai")
        from lrt.rerank import check_device

        if not distributed:
            check_device(a.device)
        check_export(a.model)
        if a.mode is None:  # the export's own scoring: pointwise models record it in lrt_reranker.json
            from lrt.rerank import RerankerMeta

            a.mode = RerankerMeta.load(a.model).default_mode
    check_output_path(a.out, "--out")
    if a.stats:
        check_output_path(a.stats, "--stats")
    check_paths_distinct(a)
    if a.nproc_per_node > 1 and not distributed:
        return _relaunch(argv, a.nproc_per_node)

    if a.requests:
        plan = plan_requests(a.requests, a.top_k)
        src_q, src_c = a.requests, a.requests
    else:
        plan = plan_inputs(a.run, a.queries, a.corpus, a.top_k, a.on_missing)
        src_q, src_c = a.queries, a.corpus
    if plan.skipped_queries or plan.skipped_docs:
        print(f"skipped (--on-missing skip): {len(plan.skipped_queries)} queries not in {src_q} (kept in "
              f"first-stage order), {plan.skipped_docs} top-{a.top_k} documents not in {src_c} (placed after the "
              "reranked documents of their query)")
    from lrt.rerank import Reranker

    common: dict[str, Any] = dict(mode=a.mode, window=a.window, stride=a.stride, batch_size=a.batch_size,
                                  max_length=a.max_length)
    if a.backend == "openai":
        rr = Reranker.from_openai(a.base_url, a.model, export, api_key_env=a.api_key_env, concurrency=a.concurrency,
                                  logprobs=a.logprobs, prompt_format=a.prompt_format,
                                  max_retries=max(0, a.max_retries), **common)
    elif distributed:
        return _main_distributed(a, plan, common)
    else:
        rr = Reranker.from_pretrained(a.model, device=a.device, dtype=a.dtype, **common)
    ranked = rr.rerank_many(plan.queries)
    st = rr.last_stats.to_dict()
    _finish(a, plan, ranked, st, rr.window, rr.stride, 1)
    return 0


def _finish(a: argparse.Namespace, plan: Plan, ranked: dict[str, list[tuple[str, float]]], st: dict[str, Any],
            window: int, stride: int, nproc: int) -> None:
    write_output(a.out, plan, merged(plan, ranked), a.tag or f"lrt-{a.mode}")
    from lrt.rerank.summary import print_summary

    print_summary(st, mode=a.mode, backend=a.backend, top_k=a.top_k, window=window, stride=stride, nproc=nproc,
                  out=a.out, logprobs=a.logprobs, queries=len(plan.queries))
    if a.stats:
        rec = {**st, "processes": nproc, "skipped_queries": len(plan.skipped_queries), "skipped_docs": plan.skipped_docs}
        atomic_write(a.stats, lambda fh: fh.write((json.dumps(rec, indent=2) + "\n").encode("utf-8")))


def _main_distributed(a: argparse.Namespace, plan: Plan, common: dict[str, Any]) -> int:
    """One torchrun worker: rerank queries[rank::world] on its device, gather to rank 0, which
    writes the one merged output (same content as one process: queries are independent)."""
    import torch
    import torch.distributed as dist

    from lrt.rerank import Reranker

    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    device = a.device
    if device is None or device == "cuda":
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    from lrt.rerank import check_device

    check_device(device)
    dist.init_process_group("gloo")
    try:
        rr = Reranker.from_pretrained(a.model, device=device, dtype=a.dtype, **common)
        mine = plan.queries[rank::world]
        ranked = rr.rerank_many(mine)
        parts: list[Any] = [None] * world
        dist.all_gather_object(parts, (ranked, rr.last_stats))
        if rank == 0:
            from lrt.rerank import RerankStats

            allr: dict[str, list[tuple[str, float]]] = {}
            for r, _ in parts:  # type: ignore[misc]
                allr.update(r)
            total = RerankStats.merge([s for _, s in parts]).to_dict()  # type: ignore[misc]
            total["queries"] = len(plan.queries)
            _finish(a, plan, allr, total, rr.window, rr.stride, world)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    from lrt.cli import main as cli_main

    sys.exit(cli_main(["rerank", *sys.argv[1:]]))
