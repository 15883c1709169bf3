"""Segment-lookup pretraining for a quickstart backbone (resumable). EXPERIMENTAL: no run has reached
the 0.9 lookup gate yet, so the shipped backbone still comes from scripts/pretrain_tiny_backbone.py;
what was run and measured is in lrt/assets/tiny-backbone/README.md ("Lookup pretraining, 2026-11-29").

Why: FIRST fine-tuning needs a model that can tell which identifier's passage holds a query word. In
the FIRST layout the identifier comes before its passage, so that takes two attention hops (each word
learns which identifier it sits under; the answer position finds the query word's occurrences and
copies their identifier). A model trained from scratch on ranking sits on the display-order plateau
for many CPU-minutes (lrt/assets/tiny-backbone/README.md). This script teaches the lookup skill on
its own, on data that is NOT the quickstart's: a vocabulary half the quickstart never asks about
(`lrt.demo.world.vocabulary_split`), no grades, no ranking, no chat template.

Task: letter-tagged segments `[A] w w\\n[B] w\\n...`, then probes `find x [L]\\n` (four phrasings) whose
answer L is the segment holding x (1-2 copies, exactly one segment). Loss: cross-entropy on the
answer letters only. Curriculum: segments hold at most `lmax` words; lmax starts at 1 (x sits right
after its tag) and grows by one each time held-out accuracy at the current lmax reaches `--advance`,
up to `--lfinal`. The gate (`--gate`, default 0.9) is accuracy on held-out examples at lfinal.

Every `--save-every` steps the model, optimizer, RNG and curriculum state are written to
`<out>/pretrain_state/` (weights-only tensors + JSON), so an interrupted run resumes where it stopped.

    python scripts/pretrain_lookup_backbone.py --out /tmp/bb --minutes 60             # Llama, 2 layers
    python scripts/pretrain_lookup_backbone.py --out /tmp/bbw --window 9 --lmin 4 --layers 3  # local first layer
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from lrt.demo.tokenizer import build_tokenizer
from lrt.demo.world import vocabulary_split

LETTERS = [chr(65 + i) for i in range(26)]
PROBES = ["find {x} [", "{x} is in [", "where is {x} ? [", "Query : {x} Ranking : ["]


def example(rng: random.Random, tok, words: list[str], lmax: int, nmax: int, probes: int,
            lmin: int = 1) -> tuple[list[int], list[int]]:
    """(input ids, labels): one body of 2..nmax segments and `probes` lookups into it."""
    ids = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    n = rng.randint(2, nmax)
    segs: list[list[str]] = [[] for _ in range(n)]
    px = rng.sample(words, probes)
    others = [w for w in words if w not in px]
    owner = [rng.randrange(n) for _ in px]
    for x, o in zip(px, owner):
        segs[o] += [x] * rng.randint(1, 2)
    for s in segs:
        length = rng.randint(min(lmin, lmax), lmax)
        while len(s) < length:
            s.append(rng.choice(others))
        rng.shuffle(s)
    toks = ids("".join(f"[{LETTERS[j]}] " + " ".join(s) + "\n" for j, s in enumerate(segs)))
    lab = [-100] * len(toks)
    for x, o in zip(px, owner):
        q = ids(rng.choice(PROBES).format(x=x))
        toks += q + ids(LETTERS[o]) + ids("]\n")
        lab += [-100] * len(q) + ids(LETTERS[o]) + [-100, -100]
    return toks, lab


def batch(rng: random.Random, tok, words: list[str], lmax: int, nmax: int, probes: int, size: int, lmin: int = 1):
    exs = [example(rng, tok, words, lmax, nmax, probes, lmin) for _ in range(size)]
    T = max(len(t) for t, _ in exs)
    x = torch.full((size, T), tok.pad_token_id)
    y = torch.full((size, T), -100)
    m = torch.zeros((size, T), dtype=torch.long)
    for i, (t, lab) in enumerate(exs):
        x[i, : len(t)], y[i, : len(lab)], m[i, : len(t)] = torch.tensor(t), torch.tensor(lab), 1
    return x, y, m


@torch.no_grad()
def accuracy(model, tok, words: list[str], lmax: int, nmax: int, probes: int, n: int, seed: int,
             lmin: int = 1) -> float:
    """Answer-letter accuracy on `n` held-out examples (own RNG stream: never seen in training)."""
    rng = random.Random(f"pretrain-eval:{seed}:{lmax}")
    was = model.training
    model.eval()
    hit = tot = 0
    for start in range(0, n, 64):
        x, y, m = batch(rng, tok, words, lmax, nmax, probes, min(64, n - start), lmin)
        pred = model(input_ids=x, attention_mask=m).logits[:, :-1].argmax(-1)
        tgt = y[:, 1:]
        sel = tgt != -100
        hit += int((pred[sel] == tgt[sel]).sum())
        tot += int(sel.sum())
    model.train(was)
    return hit / tot


def build_model(tok, hidden: int, layers: int, heads: int, ffn: int, window: int = 0):
    """Llama; with `window` > 0 a Qwen3 whose first layer attends only to the last `window` tokens.

    Why the window: a word must learn which tag it sits under. Under full attention with rotary
    positions, "the nearest tag" needs a sharp recency bias that small models learn slowly; a local
    first layer sees only its own tag when segments are long enough (see --lmin), so the signal is
    there from the first step.
    """
    if window:
        from transformers import Qwen3Config, Qwen3ForCausalLM

        cfg = Qwen3Config(
            vocab_size=len(tok), hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
            num_attention_heads=heads, num_key_value_heads=heads, head_dim=hidden // heads,
            max_position_embeddings=1024, tie_word_embeddings=True, use_sliding_window=True,
            sliding_window=window, max_window_layers=0,
            layer_types=["sliding_attention"] + ["full_attention"] * (layers - 1),
            pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None,
            rms_norm_eps=1e-5, attn_implementation="sdpa",
        )
        return Qwen3ForCausalLM(cfg)
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=1024,
        tie_word_embeddings=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        bos_token_id=None, rms_norm_eps=1e-5, attn_implementation="sdpa",
    )
    return LlamaForCausalLM(cfg)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--minutes", type=float, default=60.0, help="wall-clock budget of this invocation")
    ap.add_argument("--max-steps", type=int, default=40000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--ffn", type=int, default=256)
    ap.add_argument("--nmax", type=int, default=6, help="segments per example: 2..nmax")
    ap.add_argument("--window", type=int, default=0, help="> 0: Qwen3 with a sliding-window first layer")
    ap.add_argument("--lmin", type=int, default=1, help="segments hold at least this many words (fillers)")
    ap.add_argument("--probes", type=int, default=4)
    ap.add_argument("--lfinal", type=int, default=6, help="the curriculum ends at segments of up to this many words")
    ap.add_argument("--advance", type=float, default=0.9, help="held-out accuracy that moves lmax up by one")
    ap.add_argument("--gate", type=float, default=0.9)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--save-every", type=int, default=250)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="1 thread: bitwise-reproducible on CPU")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    state_dir = out / "pretrain_state"
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(out)
    words, held = vocabulary_split()
    torch.manual_seed(a.seed)
    model = build_model(tok, a.hidden, a.layers, a.heads, a.ffn, a.window)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.98), weight_decay=0.01)
    st = {"step": 0, "lmax": a.lmin, "log": [], "train_seconds": 0.0}
    rng = random.Random(f"pretrain:{a.seed}")
    if (state_dir / "state.json").exists():  # resume: weights-only tensors + JSON, nothing executed
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(state_dir / "model.safetensors")))
        opt.load_state_dict(torch.load(state_dir / "optimizer.pt", weights_only=True))
        st = json.loads((state_dir / "state.json").read_text())
        rng.setstate(tuple(v if not isinstance(v, list) else tuple(v) for v in st.pop("rng")))  # type: ignore[arg-type]
        torch.set_rng_state(torch.load(state_dir / "torch_rng.pt", weights_only=True))
        print(f"resumed at step {st['step']} (lmax {st['lmax']})", flush=True)
    model.train()
    t0, run = time.time(), []

    def save() -> None:
        from safetensors.torch import save_file

        state_dir.mkdir(exist_ok=True)
        save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, str(state_dir / "model.safetensors"))
        torch.save(opt.state_dict(), state_dir / "optimizer.pt")
        torch.save(torch.get_rng_state(), state_dir / "torch_rng.pt")
        (state_dir / "state.json").write_text(json.dumps({**st, "rng": rng.getstate()}))

    while st["step"] < a.max_steps and time.time() - t0 < a.minutes * 60:
        x, y, m = batch(rng, tok, words, st["lmax"], a.nmax, a.probes, a.batch, a.lmin)
        warm = min(1.0, (st["step"] + 1) / 100)
        for g in opt.param_groups:
            g["lr"] = a.lr * warm
        loss = model(input_ids=x, attention_mask=m, labels=y).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        st["step"] += 1
        run.append(loss.item())
        if st["step"] % a.eval_every == 0:
            acc = accuracy(model, tok, words, st["lmax"], a.nmax, a.probes, 256, a.seed, a.lmin)
            rec = {"step": st["step"], "lmax": st["lmax"], "loss": sum(run) / len(run), "acc_at_lmax": acc,
                   "elapsed_s": round(st["train_seconds"] + time.time() - t0, 1)}
            if st["lmax"] < a.lfinal and acc >= a.advance:
                st["lmax"] += 1
            st["log"].append(rec)
            print(json.dumps(rec), flush=True)
            run = []
        if st["step"] % a.save_every == 0:
            save()
    st["train_seconds"] = round(st["train_seconds"] + time.time() - t0, 1)
    save()
    gate = accuracy(model, tok, words, a.lfinal, a.nmax, a.probes, 1024, a.seed + 1, a.lmin)
    other_half = accuracy(model, tok, held, a.lfinal, a.nmax, a.probes, 512, a.seed + 1, a.lmin)
    model.save_pretrained(out, safe_serialization=True)
    summary = {"steps": st["step"], "lmax_reached": st["lmax"], "train_seconds": st["train_seconds"],
               "params": sum(p.numel() for p in model.parameters()),
               "heldout_lookup_acc_at_lfinal": gate, "gate": a.gate, "gate_passed": gate >= a.gate,
               "zero_shot_lookup_acc_quickstart_vocabulary": other_half, "args": vars(a)}
    (out / "pretrain_log.json").write_text(json.dumps({"summary": summary, "log": st["log"]}, indent=1))
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
