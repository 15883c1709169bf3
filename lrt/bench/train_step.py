"""`lrt bench train-step`: memory and speed of lrt's training step against the naive full-logits
step and against a floor, with gradient checkpointing off and on.

Every variant builds a real `Trainer` from a generated recipe (a Llama-style model initialised from
its config, a tiny tokenizer, listwise data whose passages fill `--seq` tokens) and runs on the
micro-batches the trainer itself serves for each step:
- `lrt`: `Trainer.train_step()`, the exact function `lrt train` runs (data, forward, loss,
  backward, clipping, AdamW, scheduler), so the benchmark cannot drift from training; the trainer,
  not the benchmark, puts the model in training mode;
- `naive`: what the anchors do: `model(...).logits` (a `[B, T, V]` tensor), cross-entropy of the
  target rows taken from those logits (or `log_softmax` over all of them with `--naive-ce full`,
  as the FIRST/rank_llm code does), ranking scores sliced from the logits at the answer position,
  the same loss and normalisation, backward, clipping, the trainer's AdamW;
- `floor`: decoder forward/backward plus the same clipping and AdamW, with the loss the dot product
  of the answer hidden state with the identifier rows of the LM head: the least any first-token
  reranker step can do. `lrt / floor` is what lrt's losses cost on top of the model itself.

Why one fresh subprocess per variant: `ru_maxrss` is a process-lifetime high-water mark, so two
variants in one process would hide the smaller one. Each worker records `ru_maxrss` after its
imports (the baseline) and at the end; `step_mb` = peak − baseline is the memory the step itself
needs (weights, grads, AdamW state, activations, logits). On CUDA the memory ratios use
`torch.cuda.max_memory_allocated` (`cuda_peak_mb`), and each step's clock stops after a device sync.
`activation_mb` counts the distinct
non-parameter tensors autograd saves for backward during one real step (a saved-tensors hook
around the step; checkpointed layers keep only their inputs). Variants alternate order across
repeats so machine noise hits all of them.
"""
from __future__ import annotations

import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
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


def lrt_step(module: Any, objective: Any, optimizer: Any, batch: dict[str, Any], max_grad_norm: float) -> float:
    """`RerankModule` forward + backward + clipping + optimizer on a given batch: the core of
    `Trainer.train_step` without data or schedule, for op-level checks (tests/test_no_full_logits.py).
    The benchmark itself times `Trainer.train_step`."""
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


def build_config_dir(out: Path, cfg: dict[str, Any]) -> str:
    """A model directory holding a Llama config of the benchmark's size and a tiny tokenizer; the
    recipe loads it with `model.init: from_config` (random weights, seeded by the trainer)."""
    from transformers import LlamaConfig

    from lrt.testing.tiny import build_tokenizer

    tok = build_tokenizer("chatml")
    LlamaConfig(
        vocab_size=cfg["vocab"], hidden_size=cfg["hidden"], intermediate_size=cfg["intermediate"],
        num_hidden_layers=cfg["layers"], num_attention_heads=cfg["heads"], num_key_value_heads=cfg["heads"],
        max_position_embeddings=max(cfg["seq"], 4096), tie_word_embeddings=cfg["tie"],
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
    ).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def bench_examples(n_lists: int, n_ids: int, seq: int, seed: int = 0) -> list[Any]:
    """Listwise examples whose passages are longer than the `seq` budget, so `data.max_length`
    cuts every passage to the same length and each list fills (almost) exactly `seq` tokens."""
    from lrt.data.schema import Candidate, ListwiseExample

    rng = random.Random(seed)
    words = "the quick brown fox jumps over lazy dog passage query rank search document text".split()
    per = max(8, 2 * seq // n_ids)
    out = []
    for q in range(n_lists):
        cands = [Candidate(f"q{q}d{i}", " ".join(rng.choices(words, k=per))) for i in range(n_ids)]
        ranking = [c.docid for c in cands]
        rng.shuffle(ranking)
        out.append(ListwiseExample(f"q{q}", " ".join(rng.choices(words, k=6)), cands, ranking, None))
    return out


def bench_recipe(work: Path, cfg: dict[str, Any]) -> Any:
    """The recipe every variant's Trainer is built from (FIRST: first_alpha prompt, lm + ranknet;
    fullrank: numeric identifiers, importance-weighted lm)."""
    from lrt.config import recipe_from_dict
    from lrt.data.schema import write_examples

    setting = cfg["setting"]
    n = cfg.get("n_ids") or SETTINGS[setting]["n_ids"]
    n_lists = cfg["batch"] * (cfg["warmup"] + cfg["steps"] + 1)
    write_examples(bench_examples(n_lists, n, cfg["seq"]), work / "train.jsonl")
    loss = [t.model_dump() for t in loss_terms(setting, cfg["chunk_size"])]
    raw = {
        "model": {"name_or_path": build_config_dir(work / "model", cfg), "init": "from_config",
                  "dtype": "bfloat16" if cfg.get("precision") == "bf16" else "float32",
                  "attn_implementation": "sdpa", "gradient_checkpointing": bool(cfg["gc"])},
        "data": {"train": str(work / "train.jsonl"), "max_length": cfg["seq"], "window": n},
        "prompt": {"preset": "first_alpha" if SETTINGS[setting]["scheme"] == "alpha" else "rankgpt_numeric",
                   "max_passage_tokens": cfg["seq"]},
        "loss": loss,
        "train": {"max_steps": cfg["warmup"] + cfg["steps"] + 1, "per_device_batch_size": cfg["batch"], "grad_accum": 1,
                  "lr": 1e-5, "warmup_steps": 0, "max_grad_norm": 1.0, "save_final": False, "log_every": 10**6,
                  "seed": 0, "precision": cfg.get("precision", "fp32")},
        "eval": {"at_start": False, "at_end": False},
        "log": {"progress": False},
        "output_dir": str(work / "run"),
    }
    return recipe_from_dict(raw, [])


def floor_step(trainer: Any, batch: dict[str, Any]) -> float:
    """The least a first-token reranker step does: decoder forward, loss = answer hidden state ·
    identifier rows of the LM head (fullrank, whose ids are multi-token: the target's token rows at
    the position predicting the first target token), backward, the trainer's clipping and AdamW."""
    import torch

    from lrt.scoring import decoder_and_head, hidden_states

    decoder, head = decoder_and_head(trainer.hf_model)
    with trainer.autocast():
        h = hidden_states(decoder, batch)
    B, T = h.shape[:2]
    if batch["cand_ids"].numel():
        pos, rows = batch["answer_pos"], batch["cand_ids"]  # [B], [B, N]
    else:
        flat = batch["lm_flat_pos"]
        pos = torch.full((B,), T, dtype=torch.long, device=flat.device).scatter_reduce(0, flat // T, flat % T, "amin")
        rows = batch["lm_targets"].unique()[None].expand(B, -1)
    loss = torch.einsum("bh,bnh->bn", h[torch.arange(B), pos].float(), head.weight[rows].float()).mean()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trainer.module.parameters(), trainer.r.train.max_grad_norm)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def run_variant(cfg: dict[str, Any]) -> dict[str, Any]:
    """Worker body (meant for a fresh process): build the Trainer, warm up, time steps, read peak RSS."""
    import torch
    from transformers import LlamaForCausalLM  # noqa: F401  (model code is part of the import baseline)

    from lrt.bench.guard import SavedTensorBytes
    from lrt.train.data import batch_to
    from lrt.train.loop import Trainer

    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    import_mb = _rss_mb()
    sync, cuda = (torch.cuda.synchronize, True) if torch.cuda.is_available() else ((lambda: None), False)
    with tempfile.TemporaryDirectory(prefix="lrt-bench-") as tmp:
        trainer = Trainer(bench_recipe(Path(tmp), cfg))
        params = {p.untyped_storage().data_ptr() for p in trainer.module.parameters()}

        def batch(i: int) -> dict[str, Any]:
            (b,) = trainer.batches.step(i)  # grad_accum 1: one micro-batch per step
            return batch_to(b, trainer.env.device)

        if cfg["variant"] == "lrt":
            step = lambda i: trainer.train_step()["loss"]  # noqa: E731  (serves step i itself)
        elif cfg["variant"] == "naive":
            def step(i: int) -> float:
                with trainer.autocast():
                    return naive_step(trainer.hf_model, trainer.objective, trainer.optimizer, batch(i),
                                      trainer.r.train.max_grad_norm, cfg["naive_ce"])
        else:
            step = lambda i: floor_step(trainer, batch(i))  # noqa: E731
        setup_mb = _rss_mb()
        losses, times, collate_s, tokens = [], [], [], []
        activation_bytes = 0
        for i in range(cfg["warmup"] + cfg["steps"]):
            c0 = time.perf_counter()
            tokens.append(int(trainer.batches.step(i)[0]["attention_mask"].sum()))  # collation, timed apart
            c1 = time.perf_counter()
            if i == 0:  # the warm-up step also measures what autograd keeps for backward
                with SavedTensorBytes(exclude=params) as saved:
                    losses.append(step(i))
                activation_bytes = saved.nbytes
            else:
                losses.append(step(i))
            sync()  # CUDA kernels run asynchronously: the step ends when the device is done
            t = time.perf_counter() - c1
            if i >= cfg["warmup"]:
                times.append(t)
                collate_s.append(c1 - c0)
        trainer.metrics.close()
        peak_mb = _rss_mb()
        return {
            "variant": cfg["variant"], "import_mb": import_mb, "setup_mb": setup_mb, "peak_mb": peak_mb,
            "step_times_s": times, "collate_s": collate_s, "first_loss": losses[0], "tokens": tokens[cfg["warmup"]:],
            "activation_mb": activation_bytes / 2**20, "threads": torch.get_num_threads(),
            "chunk_size": trainer.objective.chunk_rows(cfg["vocab"]),
            "target_tokens": int(trainer.batches.step(0)[0]["lm_targets"].numel()),
            "params": sum(p.numel() for p in trainer.module.parameters()),
            "train_mode": all(m.training for m in trainer.module.modules()),
            "device": str(trainer.env.device), "precision": trainer.r.train.precision,
            "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        }


def _spawn(cfg: dict[str, Any]) -> dict[str, Any]:
    """Run one variant in a fresh interpreter; its last stdout line is the JSON result."""
    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    p = subprocess.run([sys.executable, "-m", "lrt.bench.train_step", json.dumps(cfg)],
                       capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"bench worker {cfg['variant']}/{cfg['setting']} failed ({p.returncode}):\n{p.stderr[-4000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


VARIANTS = ("lrt", "naive", "floor")


def summarise(setting: str, cfg: dict[str, Any], runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """One JSON record per (setting, checkpointing): each variant's memory and speed, lrt/naive and
    lrt/floor ratios."""
    out: dict[str, Any] = {"bench": "train-step", "date": time.strftime("%Y-%m-%d"), "setting": setting,
                           "loss": SETTINGS[setting]["loss"], "grad_ckpt": bool(cfg["gc"])}
    out.update({k: cfg[k] for k in ("vocab", "hidden", "layers", "heads", "intermediate", "seq", "batch", "tie", "naive_ce")})
    tokens = statistics.median([t for r in runs["lrt"] for t in r["tokens"]])
    per: dict[str, dict[str, float]] = {}
    for v, rs in runs.items():
        step_s = statistics.median([t for r in rs for t in r["step_times_s"]])
        peak = max(r["peak_mb"] for r in rs)
        base = min(r["import_mb"] for r in rs)
        per[v] = {"peak_mb": peak, "import_mb": base, "step_mb": peak - base, "step_s": step_s,
                  "tokens_per_s": tokens / step_s, "activation_mb": max(r["activation_mb"] for r in rs)}
        if rs[0].get("cuda_peak_mb") is not None:
            per[v]["cuda_peak_mb"] = max(r["cuda_peak_mb"] for r in rs)
        for k, x in per[v].items():
            out[f"{v}_{k}"] = round(x, 4 if k == "step_s" else 1)
        out[f"{v}_first_loss"] = rs[0]["first_loss"]
    lrt = per["lrt"]
    collate = statistics.median([c for r in runs["lrt"] for c in r["collate_s"]])
    out.update({
        "tokens_per_step": int(tokens),
        "target_tokens": runs["lrt"][0]["target_tokens"],
        "params": runs["lrt"][0]["params"],
        "threads": runs["lrt"][0]["threads"],
        "chunk_size": runs["lrt"][0]["chunk_size"],
        "train_mode": all(r["train_mode"] for rs in runs.values() for r in rs),
        "timed_steps_per_variant": len([t for r in runs["lrt"] for t in r["step_times_s"]]),
        "collate_ms": round(collate * 1e3, 3),
        "collate_frac_of_step": round(collate / lrt["step_s"], 5),
        "load_avg_1m": round(os.getloadavg()[0], 2),  # other processes on the machine inflate step times
        "device": runs["lrt"][0].get("device", "cpu"), "precision": runs["lrt"][0].get("precision", "fp32"),
    })
    mem = "cuda_peak_mb" if "cuda_peak_mb" in lrt else "step_mb"  # on CUDA: device memory, not host RSS
    out["mem_metric"] = mem
    if "naive" in per:
        naive = per["naive"]
        out.update({
            "mem_ratio": _ratio(lrt[mem], naive[mem]),
            "mem_ratio_raw_rss": _ratio(lrt["peak_mb"], naive["peak_mb"]),
            "speed_ratio": _ratio(lrt["tokens_per_s"], naive["tokens_per_s"]),
            "loss_rel_diff": abs(out["lrt_first_loss"] - out["naive_first_loss"]) / max(abs(out["naive_first_loss"]), 1e-12),
        })
        out["meets_mem"] = out["mem_ratio"] is not None and out["mem_ratio"] <= 0.3
        out["meets_speed"] = out["speed_ratio"] is not None and out["speed_ratio"] >= 1.3
    if "floor" in per:
        floor = per["floor"]
        out.update({
            "mem_ratio_floor": _ratio(lrt[mem], floor[mem]),
            "time_ratio_floor": _ratio(lrt["step_s"], floor["step_s"]),
            "activation_ratio_floor": round(lrt["activation_mb"] / max(floor["activation_mb"], 1e-9), 3),
        })
    return out


def _ratio(a: float, b: float) -> float | None:
    """a / b rounded, or None when the baseline measured nothing (a toy size can leave the step's peak
    RSS at the post-import level: no ratio is better than a division by zero or a made-up one)."""
    return round(a / b, 3) if b > 0 else None


def _fmt(x: float | None, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def table(records: list[dict[str, Any]]) -> str:
    """A README-ready markdown table of the records."""
    lines = [
        "| setting | grad. ckpt | variant | step memory (MB; CPU: peak RSS − import, CUDA: max allocated) "
        "| saved activations (MB) | step (s) "
        "| tokens/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in records:
        gc = "on" if r["grad_ckpt"] else "off"
        for v in VARIANTS:
            if v + "_step_mb" in r:
                lines.append(f"| {r['setting']} ({r['loss']}) | {gc} | {v} | {r.get(v + '_cuda_peak_mb', r[v + '_step_mb']):.0f} | "
                             f"{r[v + '_activation_mb']:.0f} | {r[v + '_step_s']:.2f} | {r[v + '_tokens_per_s']:.0f} |")
        if "mem_ratio" in r:
            lines.append(f"| {r['setting']} | {gc} | **lrt / naive** | **{_fmt(r['mem_ratio'], '.3f')}** | | "
                         f"| **{_fmt(r['speed_ratio'], '.2f')}× tokens/s** |")
        if "mem_ratio_floor" in r:
            lines.append(f"| {r['setting']} | {gc} | **lrt / floor** | **{_fmt(r['mem_ratio_floor'], '.3f')}** | "
                         f"{r['activation_ratio_floor']:.3f} | **{_fmt(r['time_ratio_floor'], '.2f')}× time** | |")
    return "\n".join(lines)


@dataclass
class Options:
    """`lrt bench train-step` flags (`lrt.cli.bench.train_step`)."""

    settings: str = "first,fullrank"  # comma list of SETTINGS
    vocab: int = 151_936
    hidden: int = 256
    layers: int = 4
    heads: int = 4
    intermediate: int = 1024
    seq: int = 4096
    batch: int = 1
    chunk_size: int | None = None  # lm loss chunk_size (None: the objective's default)
    untie: bool = False  # separate LM head (default: tied, like small Qwen models)
    naive_ce: str = "targets"  # targets | full: CE of target rows of the full logits, or log_softmax over all
    grad_ckpt: str = "off,on"  # gradient checkpointing: comma list of off, on
    variants: str = ",".join(VARIANTS)  # comma list of VARIANTS
    first_ids: int | None = None  # override the FIRST window (20)
    fullrank_ids: int | None = None  # override the fullrank window (100)
    steps: int = 3  # timed steps per worker
    warmup: int = 1  # untimed warm-up steps per worker
    repeats: int = 1  # workers per variant, alternating the order
    threads: int = 0  # torch threads (0: torch default)
    precision: str = "fp32"  # fp32 | bf16 (bf16 weights and autocast, as the shipped GPU recipes)
    no_table: bool = False


def run(a: Options) -> int:
    """Every setting x gradient-checkpointing x variant in fresh workers; JSON records, then a table."""
    gcs = [g.strip() for g in a.grad_ckpt.split(",") if g.strip()]
    settings = [s.strip() for s in a.settings.split(",") if s.strip()]
    variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    for name, vals, allowed in (("setting", settings, SETTINGS), ("--grad-ckpt", gcs, ("off", "on")),
                                ("variant", variants, VARIANTS)):
        bad = [v for v in vals if v not in allowed]
        if bad or not vals:
            print(f"error: unknown {name} {bad[0] if bad else ''!r}; choose from {sorted(allowed)}", file=sys.stderr)
            return 2
    if "lrt" not in variants:
        print("error: --variants must include lrt (the ratios are lrt's)", file=sys.stderr)
        return 2
    records = []
    for setting in settings:
        for gc in gcs:
            cfg = {"setting": setting, "vocab": a.vocab, "hidden": a.hidden, "layers": a.layers, "heads": a.heads,
                   "intermediate": a.intermediate, "seq": a.seq, "batch": a.batch, "chunk_size": a.chunk_size,
                   "tie": not a.untie, "naive_ce": a.naive_ce, "steps": a.steps, "warmup": a.warmup,
                   "threads": a.threads, "gc": gc == "on", "precision": a.precision, "n_ids": a.first_ids if setting == "first" else a.fullrank_ids}
            runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
            for rep in range(a.repeats):
                k = rep % len(variants)
                for v in variants[k:] + variants[:k]:  # rotate the order across repeats
                    runs[v].append(_spawn({**cfg, "variant": v}))
                    print(f"# {setting} gc={gc} {v} rep {rep}: {runs[v][-1]['step_times_s']} s/step, "
                          f"peak {runs[v][-1]['peak_mb']:.0f} MB", file=sys.stderr, flush=True)
            rec = summarise(setting, cfg, runs)
            records.append(rec)
            print(json.dumps(rec), flush=True)
    if not a.no_table:
        print()
        print(table(records))
    return 0


if __name__ == "__main__":  # one worker of `_spawn`: argv[1] is the JSON config, the last stdout line the result
    print(json.dumps(run_variant(json.loads(sys.argv[1]))), flush=True)
