"""`lrt bench data`: tokenising + collating listwise examples, examples/s with 1 and 2 processes;
`lrt bench data --startup`: per-rank RSS and start-up time of the training data, first run vs cached.

Why: data preparation must never starve the training step. `encode_example` runs once per list
before training (`lrt.train.data.encode_all`, `datasets.map(num_proc=...)` when data.num_proc > 1);
the collator runs every step. This measures both on synthetic 100-candidate lists (~60-word
passages) with the tiny byte-level BPE tokenizer of `lrt.testing.tiny.build_tokenizer("chatml")`
(~600 tokens, ~1.4 tokens per word on the passage words used here — close to real tokenizers on
English, but a 150k-vocab tokenizer's own speed differs). Two processes use a fork
`multiprocessing.Pool` over `encode_example` (what `datasets.map` workers run per row).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import re
import statistics
import sys
import time
from typing import Any

SETTINGS: dict[str, dict[str, Any]] = {
    # FIRST: first 20 of 100 candidates, single-token letters (ranking + lm).
    "alpha20": {"preset": "first_alpha", "identifiers": "alpha", "window": 20, "max_length": 4096},
    # fullrank-style window of 100 with numeric ids (multi-token: lm only, no candidate token ids).
    "numeric100": {"preset": "rankgpt_numeric", "identifiers": "numeric", "window": 100, "max_length": 8192},
    # window of 100 with added <id_k> special tokens (single tokens: ranking + lm).
    "special100": {"preset": "rankgpt_numeric", "identifiers": "special", "window": 100, "max_length": 8192},
}

_STATE: dict[str, Any] = {}  # per-process encoder state (set before fork / in the pool initializer)


def synthetic_examples(n: int, n_cands: int = 100, words: int = 60, seed: int = 0) -> list[Any]:
    """Listwise examples with `n_cands` passages of `words` words and a random teacher ranking."""
    from lrt.data.schema import Candidate, ListwiseExample
    from lrt.testing.tiny import _corpus

    vocab = sorted({w for w in re.findall(r"[a-z]+", " ".join(_corpus()).lower()) if len(w) > 1})
    rng = random.Random(seed)
    out = []
    for q in range(n):
        cands = [Candidate(f"q{q}d{i}", " ".join(rng.choices(vocab, k=words))) for i in range(n_cands)]
        ranking = [c.docid for c in cands]
        rng.shuffle(ranking)
        out.append(ListwiseExample(f"q{q}", " ".join(rng.choices(vocab, k=6)), cands, ranking))
    return out


def make_encoder(setting: str) -> dict[str, Any]:
    """Tokenizer, template and `encode_example` kwargs of a setting (ids probed once, as training does)."""
    from lrt.data.collate import identifier_token_ids
    from lrt.data.prompts import PromptTemplate, special_tokens
    from lrt.testing.tiny import build_tokenizer

    s = SETTINGS[setting]
    tok = build_tokenizer("chatml")
    if s["identifiers"] == "special":
        tok.add_special_tokens({"additional_special_tokens": special_tokens(s["window"])}, replace_extra_special_tokens=False)
    tpl = PromptTemplate.preset(s["preset"], identifiers=s["identifiers"])
    ids = None if s["identifiers"] == "numeric" else identifier_token_ids(tok, tpl, s["window"])
    kw = dict(max_length=s["max_length"], id_token_ids=ids, window=s["window"], include_target=True)
    return {"tok": tok, "tpl": tpl, "kw": kw}


def _init(state: dict[str, Any]) -> None:
    _STATE.update(state)


def _encode(ex: Any) -> dict[str, Any]:
    from lrt.data.collate import encode_example

    return encode_example(_STATE["tok"], _STATE["tpl"], ex, **_STATE["kw"]).to_row()


def _timed(fn: Any, repeats: int) -> tuple[float, Any]:
    """Best-of-`repeats` wall time (least disturbed by other processes on a shared machine)."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _encode_all(state: dict[str, Any], exs: list[Any], procs: int) -> list[dict[str, Any]]:
    """The training path: `lrt.train.data.encode_all` with data.num_proc (datasets.map workers).

    Includes what a real run pays per call: Arrow conversion, hashing the map function for the
    fingerprint and starting the worker pool. encode_all reads only `r.data.*`, so a namespace stands
    in for the recipe.
    """
    from types import SimpleNamespace

    import datasets

    from lrt.train.data import encode_all

    datasets.disable_progress_bars()
    kw = state["kw"]
    r = SimpleNamespace(data=SimpleNamespace(max_length=kw["max_length"], window=kw["window"], num_proc=procs))
    return encode_all(r, state["tok"], state["tpl"], exs, kw["id_token_ids"], kw["include_target"])  # type: ignore[arg-type]


def bench_setting(setting: str, n: int, procs: list[int], repeats: int, words: int, encode_all_too: bool = True) -> dict[str, Any]:
    from lrt.data.collate import ListwiseCollator

    state = make_encoder(setting)
    _init(state)
    exs = synthetic_examples(n, 100, words)
    rec: dict[str, Any] = {"bench": "data", "setting": setting, "n_candidates": 100, "window": SETTINGS[setting]["window"],
                           "identifiers": SETTINGS[setting]["identifiers"], "max_length": SETTINGS[setting]["max_length"],
                           "words_per_passage": words, "examples": n, "tokenizer": "lrt.testing.tiny.build_tokenizer('chatml') byte-level BPE",
                           "tokenizer_vocab": len(state["tok"])}
    rows: list[dict[str, Any]] = []
    for p in procs:
        if p <= 1:
            sec, rows = _timed(lambda: [_encode(ex) for ex in exs], repeats)
        else:
            ctx = mp.get_context("fork")  # the parent's tokenizer is inherited, nothing re-built per worker
            with ctx.Pool(p, initializer=_init, initargs=(state,)) as pool:
                pool.map(_encode, exs[:p], chunksize=1)  # warm the workers
                sec, rows = _timed(lambda: pool.map(_encode, exs, chunksize=max(1, n // (4 * p))), repeats)
        rec[f"examples_per_s_{p}proc"] = round(n / sec, 2)
        if p > 1 and encode_all_too:
            rec[f"examples_per_s_encode_all_{p}proc"] = round(n / _timed(lambda: _encode_all(state, exs, p), repeats)[0], 2)
    if len(procs) > 1:
        rec["speedup_2proc"] = round(rec[f"examples_per_s_{procs[-1]}proc"] / rec[f"examples_per_s_{procs[0]}proc"], 3)
    rec["tokens_per_example"] = round(statistics.mean(len(r["input_ids"]) for r in rows), 1)
    rec["target_tokens_per_example"] = round(statistics.mean(len(r["input_ids"]) - r["target_start"] for r in rows), 1)
    tok = state["tok"]
    collate = ListwiseCollator(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    for b in (1, 8):
        batches = [rows[i:i + b] for i in range(0, len(rows) - b + 1, b)] or [rows[:b]]
        sec, _ = _timed(lambda: [collate(x) for x in batches], repeats)
        rec[f"collate_ms_batch{b}"] = round(sec / len(batches) * 1e3, 3)
    return rec


def table(records: list[dict[str, Any]]) -> str:
    lines = ["| setting | window / ids | tokens per list | examples/s, 1 proc | examples/s, 2 procs (Pool) | "
             "examples/s, encode_all num_proc=2 | collate ms (batch 1 / 8) |",
             "|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['setting']} | {r['window']} {r['identifiers']} | {r['tokens_per_example']:.0f} | "
                     f"{r.get('examples_per_s_1proc', float('nan')):.1f} | {r.get('examples_per_s_2proc', float('nan')):.1f} | "
                     f"{r.get('examples_per_s_encode_all_2proc', float('nan')):.1f} | "
                     f"{r['collate_ms_batch1']:.2f} / {r['collate_ms_batch8']:.2f} |")
    return "\n".join(lines)


# ---- start-up: RSS per rank and time, today's in-memory path vs the tokenised cache ---------------
# Each measurement is a fresh group of processes (one per rank, gloo process group) that runs what the
# Trainer runs before its first step: load + validate the split, load the tokenizer, probe the
# identifiers, tokenise. RSS is read from /proc/self/status right before and right after, in every rank.

def _rss() -> dict[str, int]:
    """Current resident set (all, and anonymous = private heap) and the peak, in bytes."""
    import resource

    out = {"peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon"):
                out[k] = int(v.split()[0]) * 1024
    return out


def write_startup_inputs(work: str, lists: int, words: int, seed: int = 0) -> dict[str, str]:
    """A tiny model directory (its tokenizer is what the recipe loads) and N synthetic FIRST lists of
    20 passages; `words`=100 gives ~2.5k tokens per list with the tiny byte-level BPE tokenizer."""
    from pathlib import Path

    from lrt.data.schema import write_examples
    from lrt.testing.tiny import save_tiny_model

    w = Path(work)
    model = w / "model"
    if not (model / "config.json").exists():
        save_tiny_model(model, "chatml")
    data = w / f"train-{lists}x{words}.jsonl"
    if not data.exists():
        write_examples(synthetic_examples(lists, 20, words, seed), data)
    return {"model": str(model), "data": str(data)}


def startup_recipe(inputs: dict[str, str], out: str, cache: bool, cache_dir: str | None) -> Any:
    from lrt.config import recipe_from_dict

    data: dict[str, Any] = {"train": inputs["data"], "max_length": 4096}
    if cache:  # fields of the cached path only (today's recipe schema does not know them)
        data["cache"] = True
        if cache_dir:
            data["cache_dir"] = cache_dir
    raw = {"model": {"name_or_path": inputs["model"]}, "data": data, "prompt": {"preset": "first_alpha"},
           "train": {"per_device_batch_size": 1}, "output_dir": out}
    return recipe_from_dict(raw, [])


def _startup_worker(a: argparse.Namespace) -> int:
    """One rank of one measurement; writes its JSON record to a.result.rank{R}.json."""
    import gc

    import torch  # noqa: F401 - imported before the first RSS reading, as in training
    import transformers  # noqa: F401

    from lrt.train.dist import DistEnv

    inputs = json.loads(a.inputs)
    env = DistEnv.setup(use_deepspeed=False)
    r = startup_recipe(inputs, a.out, a.worker == "cached", a.cache_dir)
    # code and libraries are not the rows: import what the path runs, and load the tokenizer once, first
    import lrt.data.collate  # noqa: F401
    import lrt.modeling
    import lrt.train.data  # noqa: F401
    if a.worker == "cached":
        import pyarrow  # noqa: F401

        import lrt.data.cache  # noqa: F401
        import lrt.objective.objective  # noqa: F401
    lrt.modeling.load_tokenizer(r)
    gc.collect()
    before = _rss()
    env.barrier()
    t0 = time.perf_counter()
    if a.worker == "legacy":  # today's path, exactly as Trainer.__init__ ran it before the cache
        from lrt.data.collate import identifier_token_ids
        from lrt.modeling import load_tokenizer
        from lrt.train.data import encode_all, load_split, prompt_template

        exs = load_split(r, r.data.train)
        tok = load_tokenizer(r, n_identifiers=max(len(e.candidates) for e in exs))
        tpl = prompt_template(r)
        ids = identifier_token_ids(tok, tpl, max(len(e.candidates) for e in exs))
        rows: Any = encode_all(r, tok, tpl, exs, ids, True)
        keep = (exs, rows)
    else:
        from lrt.train.data import prepare_data
        from lrt.objective.objective import Objective

        d = prepare_data(r, env, Objective.from_recipe(r))
        rows = d.rows
        keep = (d,)
    sec = time.perf_counter() - t0
    gc.collect()
    after = _rss()
    n_tokens = sum(len(rows[i]["input_ids"]) for i in range(min(len(rows), 200)))  # touch a few rows
    rec = {"mode": a.worker, "rank": env.rank, "world": env.world, "lists": len(rows), "seconds": round(sec, 3),
           "rss_growth_mb": round((after["VmRSS"] - before["VmRSS"]) / 2**20, 1),
           "anon_growth_mb": round((after["RssAnon"] - before["RssAnon"]) / 2**20, 1),
           "peak_growth_mb": round((after["peak"] - before["VmRSS"]) / 2**20, 1),
           "tokens_first_200": n_tokens}
    with open(f"{a.result}.rank{env.rank}.json", "w", encoding="utf-8") as fh:
        json.dump(rec, fh)
    del keep
    env.barrier()
    return 0


def _launch_startup(mode: str, procs: int, inputs: dict[str, str], out: str, cache_dir: str | None, result: str,
                    pythonpath: str | None) -> list[dict[str, Any]]:
    import subprocess

    from lrt.train.dist import _free_port

    port = str(_free_port())
    env0 = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "WORLD_SIZE": str(procs),
            "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", "HF_DATASETS_OFFLINE": "1"}
    if pythonpath:
        env0["PYTHONPATH"] = pythonpath
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", mode, "--inputs", json.dumps(inputs), "--out", out,
           "--result", result] + (["--cache-dir", cache_dir] if cache_dir else [])
    ps = [subprocess.Popen(cmd, env={**env0, "RANK": str(k), "LOCAL_RANK": str(k)}, cwd=pythonpath or None)
          for k in range(procs)]
    codes = [p.wait() for p in ps]
    if any(codes):
        raise RuntimeError(f"{mode} x{procs}: worker exit codes {codes}")
    recs = []
    for k in range(procs):
        with open(f"{result}.rank{k}.json", encoding="utf-8") as fh:
            recs.append(json.load(fh))
    return recs


def bench_startup(a: argparse.Namespace) -> list[dict[str, Any]]:
    import shutil
    import tempfile
    from pathlib import Path

    work = Path(a.workdir or tempfile.mkdtemp(prefix="lrt-bench-data-"))
    work.mkdir(parents=True, exist_ok=True)
    inputs = write_startup_inputs(str(work), a.lists, a.words)
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    out: list[dict[str, Any]] = []
    first_at = {int(x) for x in a.first_at.split(",")} if a.first_at else None
    cache_dir = str(work / "cache")  # one cache for every process count: it does not depend on it
    for procs in [int(x) for x in a.procs.split(",")]:
        for mode in modes:
            first = first_at is None or procs in first_at
            runs = [("legacy", mode)] if mode == "legacy" else ([("first", mode)] if first else []) + [("cached", mode)]
            for phase, m in runs:
                if phase == "first":
                    shutil.rmtree(cache_dir, ignore_errors=True)
                recs = _launch_startup(m, procs, inputs, str(work / f"run-{procs}"), cache_dir if m == "cached" else None,
                                       str(work / f"result-{m}-{phase}-{procs}"), a.legacy_src if m == "legacy" else None)
                rec = {"bench": "data-startup", "path": m, "phase": phase, "procs": procs, "lists": recs[0]["lists"],
                       "words_per_passage": a.words, "tokens_per_list_first_200": round(recs[0]["tokens_first_200"] / min(200, recs[0]["lists"]), 1),
                       "seconds_max_rank": max(x["seconds"] for x in recs),
                       "rss_growth_mb_per_rank": [x["rss_growth_mb"] for x in recs],
                       "anon_growth_mb_per_rank": [x["anon_growth_mb"] for x in recs],
                       "peak_growth_mb_per_rank": [x["peak_growth_mb"] for x in recs],
                       "code": a.legacy_src if (m == "legacy" and a.legacy_src) else "this checkout"}
                out.append(rec)
                print(json.dumps(rec), flush=True)
    return out


def startup_table(records: list[dict[str, Any]]) -> str:
    lines = ["| path | phase | procs | lists | start-up s (slowest rank) | RSS growth MB per rank | anon RSS growth MB per rank |",
             "|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['path']} | {r['phase']} | {r['procs']} | {r['lists']} | {r['seconds_max_rank']:.2f} | "
                     f"{' / '.join(f'{x:.0f}' for x in r['rss_growth_mb_per_rank'])} | "
                     f"{' / '.join(f'{x:.0f}' for x in r['anon_growth_mb_per_rank'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lrt bench data", description=__doc__.split("\n\n")[0])
    p.add_argument("--settings", default=",".join(SETTINGS), help="comma list of: " + ", ".join(SETTINGS))
    p.add_argument("--examples", type=int, default=48, help="lists per measurement")
    p.add_argument("--words", type=int, default=60, help="words per passage")
    p.add_argument("--procs", default="1,2", help="process counts to measure")
    p.add_argument("--repeats", type=int, default=2, help="best-of repeats per measurement")
    p.add_argument("--no-encode-all", action="store_true", help="skip the datasets.map (encode_all) measurement")
    p.add_argument("--no-table", action="store_true")
    g = p.add_argument_group("start-up (--startup): RSS per rank and start-up time, first run vs cached")
    g.add_argument("--startup", action="store_true", help="measure the training data start-up instead of throughput")
    g.add_argument("--lists", type=int, default=1000, help="synthetic FIRST lists (20 passages each)")
    g.add_argument("--modes", default="legacy,cached", help="legacy (in-memory, no cache) and/or cached")
    g.add_argument("--workdir", default=None, help="where the data, model and caches go (default: a temp dir)")
    g.add_argument("--first-at", default=None, help="process counts whose first (uncached) start is measured "
                   "(default: all); the others start from the cache an earlier measurement built")
    g.add_argument("--legacy-src", default=None, help="run the legacy path from another checkout (e.g. a git worktree of the old code)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--inputs", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    p.add_argument("--cache-dir", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # single calls; avoids the post-fork warning
    if a.worker:
        return _startup_worker(a)
    if a.startup:
        if a.words == 60 and "--words" not in (argv or sys.argv):
            a.words = 100  # ~2.5k tokens per 20-passage list
        recs = bench_startup(a)
        if not a.no_table:
            print()
            print(startup_table(recs))
        return 0
    procs = [int(x) for x in a.procs.split(",")]
    records = []
    for s in [x.strip() for x in a.settings.split(",") if x.strip()]:
        if s not in SETTINGS:
            print(f"error: unknown setting {s!r}; choose from {sorted(SETTINGS)}", file=sys.stderr)
            return 2
        rec = bench_setting(s, a.examples, procs, a.repeats, a.words, not a.no_encode_all)
        records.append(rec)
        print(json.dumps(rec), flush=True)
    if not a.no_table:
        print()
        print(table(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
