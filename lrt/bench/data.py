"""`lrt bench data`: tokenising + collating listwise examples, examples/s with 1 and 2 processes.

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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lrt bench data", description=__doc__.split("\n\n")[0])
    p.add_argument("--settings", default=",".join(SETTINGS), help="comma list of: " + ", ".join(SETTINGS))
    p.add_argument("--examples", type=int, default=48, help="lists per measurement")
    p.add_argument("--words", type=int, default=60, help="words per passage")
    p.add_argument("--procs", default="1,2", help="process counts to measure")
    p.add_argument("--repeats", type=int, default=2, help="best-of repeats per measurement")
    p.add_argument("--no-encode-all", action="store_true", help="skip the datasets.map (encode_all) measurement")
    p.add_argument("--no-table", action="store_true")
    a = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # single calls; avoids the post-fork warning
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
