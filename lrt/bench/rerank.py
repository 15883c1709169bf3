"""`lrt bench rerank`: latency of the three reranking modes on one model and one query set.

What is measured: the wall-clock time of `Reranker.rerank_many` over all queries (windows of
different queries batched, `--batch-size` per call), after one untimed warm-up query per mode,
divided by the number of queries. It includes prompt rendering and tokenisation; it excludes model
loading. The modes, all on the same prompts and passages:

- `first_token`: sliding window (w=20, s=10 -> 9 windows per 100 candidates), one forward each.
- `generate`: the same windows, each decoding the full permutation length (greedy, KV cache,
  EOS ignored: what a well-formed answer costs; fullrank also forces the length).
- `full`: one forward over all candidates (special identifiers <id_1>..<id_N>).

`--backends hf,openai` also times the `openai` backend (`Reranker.from_openai`) against the
loopback completions server of `lrt.testing.openai_server`, which runs the SAME model in this
process: one HTTP request per window (no server-side batching), identifier logprobs by token id
(`logprob_token_ids`), JSON both ways. It measures what the client path (prompt rendering, HTTP,
parsing, concurrency) costs on top of the same forward passes: a CPU figure, not vLLM's throughput
on a GPU. `--base-url URL --served-model NAME --model DIR` times a real server (e.g. vLLM) serving
the export DIR instead of the loopback one.

The default model is a random tiny Llama (saved with lrt metadata and reloaded through
`Reranker.from_pretrained`); `--model DIR` times an exported model instead. On a tiny CPU model the
per-token decoding overhead dominates, so `generate` looks far slower than on a 7B model on a GPU,
where prefill dominates and FIRST reports a 21-50 % saving (see the README/report).
"""
from __future__ import annotations

import json
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lrt.data.schema import Candidate
from lrt.errors import LrtError

WORDS = ("the quick brown fox jumps over lazy dog passage query rank search document text river bank "
         "money water city history music science energy market health policy model network").split()


def synthetic_queries(n: int, n_cands: int, words_per_passage: int, seed: int) -> list[tuple[str, str, list[Candidate]]]:
    rng = random.Random(seed)
    return [(f"q{q}", " ".join(rng.choices(WORDS, k=4)),
             [Candidate(f"q{q}d{i}", " ".join(rng.choices(WORDS, k=words_per_passage))) for i in range(n_cands)])
            for q in range(n)]


def build_tiny(out: Path, n_ids: int, hidden: int, layers: int, window: int, stride: int, seed: int) -> Path:
    """A random tiny Llama with <id_1>..<id_n> added and lrt_reranker.json (compact + special)."""
    from lrt.data.prompts import PromptTemplate, special_tokens
    from lrt.modeling import init_special_identifiers
    from lrt.rerank import RerankerMeta
    from lrt.testing.tiny import build_tokenizer, tiny_llama

    tok = build_tokenizer("chatml")
    tok.add_special_tokens({"additional_special_tokens": special_tokens(n_ids)}, replace_extra_special_tokens=False)
    base = len(build_tokenizer("chatml"))
    model = tiny_llama(base, hidden=hidden, layers=layers, heads=max(1, hidden // 64), seed=seed,
                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model.config.max_position_embeddings = 32768
    init_special_identifiers(model, tok)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    tpl = PromptTemplate.preset("compact", identifiers="special")
    RerankerMeta(template=tpl.to_dict(), window=window, stride=stride, max_length=32768).save(out)
    return out


def time_mode(rr: Any, queries: list, mode: str, repeats: int) -> dict[str, Any]:
    """Median ms/query of `rerank_many` over `repeats` timed runs (after one warm-up query)."""
    rr.rerank_many(queries[:1], mode=mode)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        rr.rerank_many(queries, mode=mode)
        times.append(time.perf_counter() - t0)
    st, n = rr.last_stats, len(queries)
    return {
        "mode": mode, "ms_per_query": round(1000 * statistics.median(times) / n, 2),
        "windows_per_query": st.windows / n, "calls": st.batches, "prompt_tokens_per_query": round(st.prompt_tokens / n),
        "generated_tokens_per_query": round(st.generated_tokens / n), "valid_share": st.valid_share,
    }


def bench_openai(a: Options, path: str | Path, rr: Any, modes: list[str]) -> dict[str, dict[str, Any]]:
    """Time first_token/generate through `Reranker.from_openai` against the loopback server
    running `rr.model` (same weights, same prompts)."""
    from lrt.rerank import Reranker
    from lrt.testing.openai_server import LogprobServer

    import contextlib

    out: dict[str, dict[str, Any]] = {}
    qs = synthetic_queries(a.queries, a.candidates, a.passage_tokens * 2, a.seed)
    real = a.base_url is not None
    with contextlib.nullcontext() if real else LogprobServer(rr.model, rr.tok) as srv:
        url, name = (a.base_url, a.served_model) if real else (srv.url, "bench")
        orr = Reranker.from_openai(url, name, path, window=a.window, stride=a.stride, max_length=32768,
                                   concurrency=a.concurrency, gen_force_length=True)
        orr.template = orr.template.with_(max_passage_tokens=a.passage_tokens)
        for mode in [m for m in modes if m in ("first_token", "generate")]:
            try:
                res = time_mode(orr, qs, mode, a.repeats)
            except LrtError as e:
                res = {"mode": mode, "skipped": str(e)}
            res["missing_identifiers_per_query"] = orr.last_stats.missing_identifiers / a.queries
            res["requests_per_query"] = orr.last_stats.batches / max(1, orr.last_stats.queries)
            res["logprob_path"] = orr.last_stats.logprob_path
            res["server"] = "real" if real else "loopback"
            out[mode] = res
    return out


@dataclass
class Options:
    """`lrt bench rerank` flags (`lrt.cli.bench.rerank`)."""

    model: str | None = None  # exported model dir (None: a random tiny Llama)
    queries: int = 8
    candidates: int = 100
    window: int = 20
    stride: int = 10
    batch_size: int = 8
    passage_tokens: int = 64  # synthetic passages are cut to this many tokens
    hidden: int = 256  # tiny model width
    layers: int = 4  # tiny model depth
    modes: str = "first_token,generate,full"
    backends: str = "hf"  # hf and/or openai
    concurrency: int = 4  # openai backend: parallel requests
    base_url: str | None = None  # openai backend: a real server's API root serving `model`
    served_model: str | None = None  # with base_url: the served model name
    repeats: int = 1
    device: str | None = None
    seed: int = 0


def run(a: Options) -> int:
    """Time each mode (and backend); JSON records and a summary on stdout, the table on stderr."""
    from lrt.rerank import MODES, Reranker

    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    if bad := [m for m in modes if m not in MODES]:
        raise LrtError(f"--modes: unknown {bad}; choose from {', '.join(MODES)}")
    if a.queries < 1 or a.candidates < 2 or a.repeats < 1:
        raise LrtError("need --queries >= 1, --candidates >= 2 and --repeats >= 1")
    backends = [b.strip() for b in a.backends.split(",") if b.strip()]
    if bad := [b for b in backends if b not in ("hf", "openai")]:
        raise LrtError(f"--backends: unknown {bad}; choose from hf, openai")
    if a.base_url is not None and (a.model is None or a.served_model is None or "openai" not in backends):
        raise LrtError("--base-url needs --backends ...,openai, --served-model NAME and --model DIR (the export the "
                       "server serves, for its tokenizer and prompt template)")
    with tempfile.TemporaryDirectory(prefix="lrt-bench-") as tmp:
        path = a.model or build_tiny(Path(tmp), a.candidates, a.hidden, a.layers, a.window, a.stride, a.seed)
        rr = Reranker.from_pretrained(path, device=a.device, mode="full", window=a.window, stride=a.stride,
                                      batch_size=a.batch_size, max_length=32768, gen_force_length=True)
        if "openai" in backends:
            openai_rows = bench_openai(a, path, rr, modes)
    rr.template = rr.template.with_(max_passage_tokens=a.passage_tokens)
    n_params = sum(p.numel() for p in rr.model.parameters())
    what = (f"ms/query = wall time of Reranker.rerank_many over {a.queries} queries x {a.candidates} candidates / "
            f"{a.queries} (batch {a.batch_size}, warm, excl. model load); generate decodes the full permutation per window")
    common = {"bench": "rerank", "model": a.model or f"tiny-llama h{a.hidden} l{a.layers}", "params": n_params,
              "device": str(rr.device), "threads": torch.get_num_threads(), "queries": a.queries,
              "candidates": a.candidates, "passage_tokens": a.passage_tokens, "batch_size": a.batch_size}
    qs = synthetic_queries(a.queries, a.candidates, a.passage_tokens * 2, a.seed)
    rows: dict[str, dict[str, Any]] = {}
    for mode in modes if "hf" in backends else []:
        w, s = (a.candidates, a.candidates) if mode == "full" else (a.window, a.stride)
        try:
            res = time_mode(rr, qs, mode, a.repeats)
        except LrtError as e:  # e.g. --model without enough special identifiers for `full`
            res = {"mode": mode, "skipped": str(e)}
        rows[mode] = {**common, "backend": "hf", "window": w, "stride": s, **res}
        print(json.dumps(rows[mode]), flush=True)
    if "openai" in backends:
        for mode, res in openai_rows.items():
            rows[f"openai:{mode}"] = {**common, "backend": "openai", "window": a.window, "stride": a.stride, **res}
            print(json.dumps(rows[f"openai:{mode}"]), flush=True)
    ms = {m: r["ms_per_query"] for m, r in rows.items() if "ms_per_query" in r}
    ratios = {f"{x}/{y}": round(ms[x] / ms[y], 2) for x, y in
              (("generate", "first_token"), ("first_token", "full"), ("generate", "full")) if x in ms and y in ms}
    for m in ("first_token", "generate"):
        if f"openai:{m}" in ms and m in ms:
            ratios[f"openai/hf {m}"] = round(ms[f"openai:{m}"] / ms[m], 2)
    if "openai" in backends and a.base_url is not None:
        what += f"; openai = the server at {a.base_url} serving the same export (CPU figures on a CPU server)"
    elif "openai" in backends:
        what += ("; openai = the same model behind the loopback completions server in this process (CPU, one "
                 "request per window, no server batching): client + HTTP overhead, not a vLLM GPU figure")
    summary: dict[str, Any] = {"bench": "rerank", "ratios": ratios, "what": what}
    if "generate" in ms and "first_token" in ms:
        summary["first_token_saving_vs_generate"] = round(1 - ms["first_token"] / ms["generate"], 3)
    print(json.dumps(summary), flush=True)
    print(_table(rows, ratios, what), file=sys.stderr)
    return 0


def _table(rows: dict[str, dict[str, Any]], ratios: dict[str, float], what: str) -> str:
    lines = [f"# {what}", f"{'mode':<12} {'window':>6} {'calls':>5} {'prompt tok/q':>12} {'gen tok/q':>9} {'ms/query':>9}"]
    for m, r in rows.items():
        m = m if len(m) <= 12 else m.replace("openai:", "oa:")
        if "skipped" in r:
            lines.append(f"{m:<12} skipped: {r['skipped']}")
            continue
        lines.append(f"{m:<12} {r['window']:>6} {r['calls']:>5} {r['prompt_tokens_per_query']:>12} "
                     f"{r['generated_tokens_per_query']:>9} {r['ms_per_query']:>9.1f}")
    lines.append("ratios: " + ", ".join(f"{k} = {v}x" for k, v in ratios.items()))
    return "\n".join(lines)
