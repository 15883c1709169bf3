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
An output path ending in .jsonl is written as rank_llm results (`lrt.data.rank_llm`).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from lrt.errors import LrtError
from lrt.io.atomic import atomic_write
from lrt.rerank import BACKENDS, MODES
from lrt.rerank.runfile import (Plan, check_export, check_output_path, merged, plan_inputs, plan_requests, same_file,
                                write_output)

ARGV_ENV = "LRT_RERANK_ARGV"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lrt rerank", description="Rerank the top-k of a TREC run with an lrt model.")
    p.add_argument("--model", required=True,
                   help="exported model directory (has lrt_reranker.json); with --backend openai: the served model name")
    p.add_argument("--run", default=None, help="first-stage TREC run: qid Q0 docid rank score tag")
    p.add_argument("--queries", "--topics", dest="queries", default=None, help="qid<TAB>text TSV, JSON {qid: text}, BEIR queries.jsonl ({_id, text}) or a BEIR folder")
    p.add_argument("--corpus", default=None, help="docid<TAB>[title<TAB>]text TSV, JSONL with docid/text (BEIR corpus.jsonl: _id/title/text) or a BEIR folder")
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
            if same_file(out, path):
                raise LrtError(f"{oflag} {out} is the same file as {flag} {path}: writing it would destroy that "
                               f"{'input' if (flag, path) in inputs else 'output'}; choose another {oflag} path")


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
           str(nproc), "-m", "lrt.cli", "rerank"]
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
