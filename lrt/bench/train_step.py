"""`lrt bench train-step`: peak memory and tokens/s of lrt's training step vs the naive full-logits step.

Two variants on the same randomly initialised Llama-style model and the same batch:
- `lrt`: `RerankModule` forward (decoder hidden states, identifier rows of the LM head, chunked
  LM cross-entropy) + backward + grad clipping + AdamW step, as `Trainer.train_step` runs it;
- `naive`: what the anchors do: `model(...).logits` (a `[B, T, V]` tensor), cross-entropy of the
  target rows taken from those logits (or `log_softmax` over all of them with `--naive-ce full`,
  as the FIRST/rank_llm code does), ranking scores sliced from the logits at the answer position,
  the same ranking loss and normalisation, backward, clipping, AdamW.

Why one fresh subprocess per variant: `ru_maxrss` is a process-lifetime high-water mark, so two
variants in one process would hide the smaller one. Each worker records `ru_maxrss` after its
imports (the baseline, ~0.4 GB of torch + transformers) and at the end; `step_mb` = peak −
baseline is the memory the training step itself needs (weights, grads, AdamW state, activations,
logits). Variants alternate order across repeats so machine noise hits both.

Inputs are token tensors (random prompt + a structured target) passed through the real
`ListwiseCollator`, so positions and labels have the training batch format but data preparation
is not timed; collate time is measured separately and reported against the step time.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

# Token-id layout of the synthetic vocabulary (any vocab >= 512).
PAD, EOS, LBR, RBR, GT, SPACE = 0, 2, 10, 11, 12, 13
DIGIT0 = 20  # "0".."9" -> 20..29 (numeric ids split into digits, as Qwen/Llama-3 tokenizers do)
ALPHA0 = 100  # single-token letter ids "A".."Z" -> 100..125
PROMPT_LO = 300

SETTINGS: dict[str, dict[str, Any]] = {
    # FIRST: window 20, single-token letters, lm + ranknet on the answer-position identifier logits.
    "first": {"scheme": "alpha", "n_ids": 20, "loss": "lm+ranknet"},
    # fullrank: window 100, numeric multi-token ids, importance-weighted lm loss only.
    "fullrank": {"scheme": "numeric", "n_ids": 100, "loss": "lm(importance)"},
}


def _rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def synthetic_rows(setting: str, seq: int, batch: int, vocab: int, n_ids: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """`batch` Encoded-format rows of exactly `seq` tokens: random prompt + teacher ranking target.

    alpha: per candidate `[`, letter, `]`, ` >`, ` ` (20 ids: 99 tokens incl. EOS); numeric:
    `[`, digits, `]`, ` >` (100 ids: 492 tokens). token_ranks mark `[`, id and `]` with the output
    rank, as the collator's offset spans do. Numeric ids are multi-token: no candidate token ids.
    """
    spec = SETTINGS[setting]
    n = n_ids or spec["n_ids"]
    if vocab < 512:
        raise ValueError(f"vocab={vocab} too small for the synthetic token layout (need >= 512)")
    if spec["scheme"] == "alpha" and n > 26:
        raise ValueError(f"alpha identifiers stop at 26, got n_ids={n}")
    rng = random.Random(seed)
    rows = []
    for _ in range(batch):
        order = list(range(n))  # display indices, best first
        rng.shuffle(order)
        ranks = [0] * n
        for r, i in enumerate(order, 1):
            ranks[i] = r
        target: list[int] = []
        token_ranks: list[int] = []
        for r, i in enumerate(order, 1):
            label = [ALPHA0 + i] if spec["scheme"] == "alpha" else [DIGIT0 + int(c) for c in str(i + 1)]
            piece = [LBR, *label, RBR]
            target += piece
            token_ranks += [r] * len(piece)
            if r < n:
                sep = [GT, SPACE] if spec["scheme"] == "alpha" else [GT]
                target += sep
                token_ranks += [0] * len(sep)
        target.append(EOS)
        token_ranks.append(0)
        n_prompt = seq - len(target)
        if n_prompt < 8:
            raise ValueError(f"seq={seq} too short for a {len(target)}-token {setting} target")
        prompt = [rng.randrange(PROMPT_LO, vocab) for _ in range(n_prompt)]
        cand = [ALPHA0 + i for i in range(n)] if spec["scheme"] == "alpha" else []
        rows.append({
            "input_ids": prompt + target,
            "answer_index": n_prompt + 1,  # first identifier token; logits at n_prompt (the "[") score
            "target_start": n_prompt,
            "token_ranks": token_ranks,
            "cand_token_ids": cand,
            "ranks": ranks,
            "relevance": None,
        })
    return rows


def loss_terms(setting: str, chunk_size: int | None = None) -> list[Any]:
    """The recipe loss terms of a setting (FIRST: lm + ranknet; fullrank: importance-weighted lm).

    chunk_size None keeps the objective's own default, so the bench follows what recipes get.
    """
    from lrt.config import LossTerm

    params: dict[str, Any] = {"importance": True} if setting == "fullrank" else {}
    if chunk_size is not None:
        params["chunk_size"] = chunk_size
    lm = LossTerm(name="lm", weight=1.0, params=params)
    return [lm] if SETTINGS[setting]["loss"].startswith("lm(") else [lm, LossTerm(name="ranknet", weight=1.0)]


def build_model(vocab: int, hidden: int, layers: int, heads: int, intermediate: int, seq: int, tie: bool, seed: int = 0) -> Any:
    """A randomly initialised fp32 LlamaForCausalLM with SDPA attention (same seed → same weights)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=max(seq, 4096),
        tie_word_embeddings=tie, attn_implementation="sdpa", pad_token_id=PAD, eos_token_id=EOS,
    )
    return LlamaForCausalLM(cfg)


def lrt_step(module: Any, objective: Any, optimizer: Any, batch: dict[str, Any], max_grad_norm: float) -> float:
    """One optimizer step through the real path (the non-distributed branch of `Trainer.train_step`)."""
    import torch

    dens = objective.denominators(batch)
    loss, _ = module(batch, dens, 1.0)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(module.parameters(), max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def naive_step(model: Any, objective: Any, optimizer: Any, batch: dict[str, Any], max_grad_norm: float, ce: str) -> float:
    """The anchors' step: full `[B, T, V]` logits, losses read from them, same normalisation."""
    import torch
    import torch.nn.functional as F

    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                position_ids=batch["position_ids"], use_cache=False)
    logits = out.logits  # [B, T, V]
    V = logits.shape[-1]
    if ce == "full":  # FIRST/rank_llm: log_softmax over every position, then pick the targets
        logp = torch.log_softmax(logits.float(), dim=-1).reshape(-1, V)
        nll = -logp.index_select(0, batch["lm_flat_pos"]).gather(1, batch["lm_targets"][:, None]).squeeze(1)
    else:  # the kinder variant: cross-entropy of the target rows only
        rows = logits.reshape(-1, V).index_select(0, batch["lm_flat_pos"]).float()
        nll = F.cross_entropy(rows, batch["lm_targets"], reduction="none")
    w = objective.token_weights(batch)
    nums: dict[str, torch.Tensor] = {"lm": (nll * w).sum() if w is not None else nll.sum()}
    if objective.needs_scores:
        B = logits.shape[0]
        scores = logits[torch.arange(B), batch["answer_pos"]].float().gather(1, batch["cand_ids"])
        for t in objective.terms:
            if t.kind == "rank":
                nums[t.name] = t.fn(scores, batch["ranks"], batch.get("relevance"), reduction="sum")
    loss = objective.combine(nums, objective.denominators(batch), 1.0)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def run_variant(cfg: dict[str, Any]) -> dict[str, Any]:
    """Worker body (meant for a fresh process): build, warm up, time `steps` steps, read peak RSS."""
    import torch
    from transformers import LlamaForCausalLM  # noqa: F401  (model code is part of the import baseline)

    from lrt.data.collate import ListwiseCollator
    from lrt.train.module import RerankModule
    from lrt.train.objective import Objective

    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    import_mb = _rss_mb()
    model = build_model(cfg["vocab"], cfg["hidden"], cfg["layers"], cfg["heads"], cfg["intermediate"], cfg["seq"], cfg["tie"])
    model.train()
    objective = Objective(loss_terms(cfg["setting"], cfg["chunk_size"]))
    rows = synthetic_rows(cfg["setting"], cfg["seq"], cfg["batch"], cfg["vocab"], cfg.get("n_ids"))
    collate = ListwiseCollator(PAD)
    batch = collate(rows)
    fused = True if cfg.get("optimizer") == "adamw-fused" else None  # None: torch's default, as build_optimizer
    if cfg["variant"] == "lrt":
        module = RerankModule(model, objective)
        opt = torch.optim.AdamW(module.parameters(), lr=1e-5, fused=fused)
        step = lambda: lrt_step(module, objective, opt, batch, 1.0)  # noqa: E731
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=fused)
        step = lambda: naive_step(model, objective, opt, batch, 1.0, cfg["naive_ce"])  # noqa: E731
    setup_mb = _rss_mb()
    losses, times, collate_s = [], [], []
    for i in range(cfg["warmup"] + cfg["steps"]):
        c0 = time.perf_counter()
        collate(rows)  # what Trainer.train_step does per step; timed apart from the step
        c1 = time.perf_counter()
        losses.append(step())
        t = time.perf_counter() - c1
        if i >= cfg["warmup"]:
            times.append(t)
            collate_s.append(c1 - c0)
    peak_mb = _rss_mb()
    return {
        "variant": cfg["variant"], "import_mb": import_mb, "setup_mb": setup_mb, "peak_mb": peak_mb,
        "step_times_s": times, "collate_s": collate_s, "first_loss": losses[0],
        "threads": torch.get_num_threads(), "chunk_size": objective.chunk_rows(cfg["vocab"]), "target_tokens": int(batch["lm_targets"].numel()),
        "params": sum(p.numel() for p in model.parameters()),
    }


def _spawn(cfg: dict[str, Any]) -> dict[str, Any]:
    """Run one variant in a fresh interpreter; its last stdout line is the JSON result."""
    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    p = subprocess.run([sys.executable, "-m", "lrt.bench.train_step", "--worker", json.dumps(cfg)],
                       capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"bench worker {cfg['variant']}/{cfg['setting']} failed ({p.returncode}):\n{p.stderr[-4000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def summarise(setting: str, cfg: dict[str, Any], runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """One JSON record per setting: both variants' memory and speed, and lrt/naive ratios."""
    tokens = cfg["batch"] * cfg["seq"]
    out: dict[str, Any] = {"bench": "train-step", "date": time.strftime("%Y-%m-%d"), "setting": setting,
                           "loss": SETTINGS[setting]["loss"]}
    out.update({k: cfg[k] for k in ("vocab", "hidden", "layers", "heads", "intermediate", "seq", "batch", "tie", "naive_ce", "optimizer")})
    per: dict[str, dict[str, float]] = {}
    for v, rs in runs.items():
        times = [t for r in rs for t in r["step_times_s"]]
        step_s = statistics.median(times)
        peak = max(r["peak_mb"] for r in rs)
        base = min(r["import_mb"] for r in rs)
        per[v] = {"peak_mb": peak, "import_mb": base, "step_mb": peak - base, "step_s": step_s, "tokens_per_s": tokens / step_s}
        for k, x in per[v].items():
            out[f"{v}_{k}"] = round(x, 4 if k == "step_s" else 1)
        out[f"{v}_first_loss"] = rs[0]["first_loss"]
    lrt, naive = per["lrt"], per["naive"]
    collate = statistics.median([c for r in runs["lrt"] for c in r["collate_s"]])
    out.update({
        "target_tokens": runs["lrt"][0]["target_tokens"],
        "params": runs["lrt"][0]["params"],
        "threads": runs["lrt"][0]["threads"],
        "chunk_size": runs["lrt"][0]["chunk_size"],
        "timed_steps_per_variant": len([t for r in runs["lrt"] for t in r["step_times_s"]]),
        "mem_ratio": round(lrt["step_mb"] / naive["step_mb"], 3),
        "mem_ratio_raw_rss": round(lrt["peak_mb"] / naive["peak_mb"], 3),
        "speed_ratio": round(lrt["tokens_per_s"] / naive["tokens_per_s"], 3),
        "collate_ms": round(collate * 1e3, 3),
        "collate_frac_of_step": round(collate / lrt["step_s"], 5),
        "load_avg_1m": round(os.getloadavg()[0], 2),  # other processes on the machine inflate step times
        "loss_rel_diff": abs(out["lrt_first_loss"] - out["naive_first_loss"]) / max(abs(out["naive_first_loss"]), 1e-12),
    })
    out["meets_mem"] = out["mem_ratio"] <= 0.3
    out["meets_speed"] = out["speed_ratio"] >= 1.3
    return out


def table(records: list[dict[str, Any]]) -> str:
    """A README-ready markdown table of the records."""
    lines = [
        "| setting | target tokens | variant | peak RSS (MB) | step memory (MB, peak − import) | step (s) | tokens/s "
        "| collate ms (% of step) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        for v in ("naive", "lrt"):
            coll = f"{r['collate_ms']:.2f} ({100 * r['collate_frac_of_step']:.3f} %)" if v == "lrt" else ""
            lines.append(f"| {r['setting']} ({r['loss']}) | {r['target_tokens']} | {v} | {r[v + '_peak_mb']:.0f} | "
                         f"{r[v + '_step_mb']:.0f} | {r[v + '_step_s']:.2f} | {r[v + '_tokens_per_s']:.0f} | {coll} |")
        lines.append(f"| {r['setting']} | | **lrt / naive** | {r['mem_ratio_raw_rss']:.3f} | **{r['mem_ratio']:.3f}** | "
                     f"| **{r['speed_ratio']:.2f}×** | |")
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lrt bench train-step", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", default="first,fullrank", help="comma list of: " + ", ".join(SETTINGS))
    p.add_argument("--vocab", type=int, default=151_936)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=1024)
    p.add_argument("--seq", type=int, default=4096)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--chunk-size", type=int, default=None, help="lm loss chunk_size (default: the objective's default)")
    p.add_argument("--untie", action="store_true", help="separate LM head (default: tied, like small Qwen models)")
    p.add_argument("--naive-ce", choices=["targets", "full"], default="targets",
                   help="naive LM loss: CE of target rows of the full logits, or log_softmax over all of them (FIRST code)")
    p.add_argument("--optimizer", choices=["adamw", "adamw-fused"], default="adamw",
                   help="adamw: torch default implementation (what lrt's build_optimizer creates); adamw-fused: fused=True")
    p.add_argument("--first-ids", type=int, default=None, help="override the FIRST window (20)")
    p.add_argument("--fullrank-ids", type=int, default=None, help="override the fullrank window (100)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per worker")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up steps per worker")
    p.add_argument("--repeats", type=int, default=1, help="workers per variant, alternating the order")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--no-table", action="store_true")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(list(sys.argv[1:] if argv is None else argv))
    if a.worker is not None:
        print(json.dumps(run_variant(json.loads(a.worker))), flush=True)
        return 0
    records = []
    for setting in [s.strip() for s in a.settings.split(",") if s.strip()]:
        if setting not in SETTINGS:
            print(f"error: unknown setting {setting!r}; choose from {sorted(SETTINGS)}", file=sys.stderr)
            return 2
        cfg = {"setting": setting, "vocab": a.vocab, "hidden": a.hidden, "layers": a.layers, "heads": a.heads,
               "intermediate": a.intermediate, "seq": a.seq, "batch": a.batch, "chunk_size": a.chunk_size,
               "tie": not a.untie, "naive_ce": a.naive_ce, "optimizer": a.optimizer, "steps": a.steps, "warmup": a.warmup, "threads": a.threads,
               "n_ids": a.first_ids if setting == "first" else a.fullrank_ids}
        runs: dict[str, list[dict[str, Any]]] = {"lrt": [], "naive": []}
        for rep in range(a.repeats):
            order = ["lrt", "naive"] if rep % 2 == 0 else ["naive", "lrt"]
            for v in order:
                runs[v].append(_spawn({**cfg, "variant": v}))
                print(f"# {setting} {v} rep {rep}: {runs[v][-1]['step_times_s']} s/step, peak {runs[v][-1]['peak_mb']:.0f} MB",
                      file=sys.stderr, flush=True)
        rec = summarise(setting, cfg, runs)
        records.append(rec)
        print(json.dumps(rec), flush=True)
    if not a.no_table:
        print()
        print(table(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
