"""Pretrain the tiny Llama backbone shipped in lrt/assets/tiny-backbone (run once; output is committed).

Why: a decoder trained from scratch on FIRST-format ranking stays on the display-position plateau
for many CPU-minutes (measured: lrt/assets/tiny-backbone/README.md, "Why tiny models plateau"): relevance needs a multi-hop circuit
(passage tokens learn "which identifier am I under", the answer position finds query-word matches and
copies their identifier) and neither hop gets gradient until the other exists. This script teaches
those *generic* sub-skills on tasks that are NOT the quickstart task (no ranking, no grades, no chat
template, no "Query/Passages/Ranking" prompt, a different topic split of the lexicon):

  lookup : letter-tagged segments in varied surface formats `( A ) ...`, `A : ...`, `< A > ...`,
           `A . ...`; exactly one segment contains word x (1-3 times); answer its letter.
  listall: same layout, 0..3 segments contain x; list their letters in *display* order, then `.`.
  copy   : `copy : w1..wk | w1..wk` (induction heads).
  doc    : generic LM over topic documents (topic split seed 1001, the quickstart uses seed 1).

Loss = token cross-entropy on the answer part (lookup/listall/copy) or on every token (doc).

Command (documented in the asset README):
    .venv/bin/python scripts/pretrain_tiny_backbone.py --minutes 25 --out lrt/assets/tiny-backbone
"""
from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch

from lrt.demo.tokenizer import build_tokenizer
from lrt.demo.world import World

PRETRAIN_TOPIC_SEED = 1001  # the quickstart world uses topic_seed=1
FORMATS = [("( {L} )", "in ( {L} )"), ("{L} :", "in {L} :"), ("< {L} >", "in < {L} >"), ("{L} .", "in {L} .")]


def _segments(rng: random.Random, lex: list[str], x: str, hits: list[int], n: int) -> list[list[str]]:
    segs = []
    others = [w for w in lex if w != x]
    for j in range(n):
        L = rng.randint(2, 7)
        k = hits[j]
        words = [x] * k + [rng.choice(others) for _ in range(max(L - k, 0))]
        rng.shuffle(words)
        segs.append(words)
    return segs


def make_lookup(rng: random.Random, lex: list[str], listall: bool) -> tuple[str, str]:
    """(context, answer) for one lookup / list-all example."""
    n = rng.randint(2, 12)
    x = rng.choice(lex)
    hits = [0] * n
    if listall:
        for j in rng.sample(range(n), rng.randint(0, min(3, n))):
            hits[j] = rng.randint(1, 3)
    else:
        hits[rng.randrange(n)] = rng.randint(1, 3)
    segs = _segments(rng, lex, x, hits, n)
    tag, ans_fmt = rng.choice(FORMATS)
    letters = [chr(65 + j) for j in range(n)]
    body = "".join(tag.format(L=letters[j]) + " " + " ".join(s) + "\n" for j, s in enumerate(segs))
    where = rng.randrange(3)  # question before, after, or both
    q = ("which has " if listall else "find ") + x + "\n"
    ctx = (q if where != 1 else "") + "items :\n" + body + (q if where != 0 else "")
    if listall:
        found = [letters[j] for j in range(n) if hits[j]]
        ans = "answer : " + (" , ".join(found) if found else "-") + " ."
        return ctx + "answer :", ans[len("answer :"):]
    pre, _ = ans_fmt.split("{L}")
    return ctx + "answer : " + pre.strip(), " " + letters[hits.index(max(hits))] + " " + ans_fmt.split("{L}")[1].strip()


def make_copy(rng: random.Random, lex: list[str]) -> tuple[str, str]:
    seq = [rng.choice(lex) for _ in range(rng.randint(4, 16))]
    return "copy : " + " ".join(seq) + " |", " " + " ".join(seq)


def make_doc(rng: random.Random, world: World) -> tuple[str, str]:
    ts = rng.sample(world.topics, rng.randint(1, 2))
    sents = []
    for _ in range(rng.randint(2, 4)):
        t = rng.choice(ts)
        sents.append(" ".join(rng.choice(t) for _ in range(rng.randint(3, 8))) + " .")
    return "doc :", " " + " ".join(sents)


TASKS = [("lookup", 0.5), ("listall", 0.25), ("copy", 0.15), ("doc", 0.1)]


def make_example(rng: random.Random, world: World) -> tuple[str, str, str]:
    r, acc = rng.random(), 0.0
    for name, p in TASKS:
        acc += p
        if r < acc:
            break
    if name == "lookup":
        c, a = make_lookup(rng, world.lexicon, False)
    elif name == "listall":
        c, a = make_lookup(rng, world.lexicon, True)
    elif name == "copy":
        c, a = make_copy(rng, world.lexicon)
    else:
        c, a = make_doc(rng, world)
    return name, c, a


def encode_batch(tok, exs: list[tuple[str, str, str]], eos_id: int, pad_id: int):
    """input_ids, labels (-100 outside the answer; doc examples are fully supervised), task names."""
    ids, labs = [], []
    for name, c, a in exs:
        ci = tok(c, add_special_tokens=False)["input_ids"]
        ai = tok(a, add_special_tokens=False)["input_ids"] + [eos_id]
        seq = ci + ai
        lab = ([-100] + ci[1:] if name == "doc" else [-100] * len(ci)) + ai
        ids.append(seq)
        labs.append(lab)
    T = max(len(s) for s in ids)
    x = torch.full((len(ids), T), pad_id)
    y = torch.full((len(ids), T), -100)
    m = torch.zeros((len(ids), T), dtype=torch.long)
    for i, (s, l) in enumerate(zip(ids, labs)):
        x[i, : len(s)] = torch.tensor(s)
        y[i, : len(l)] = torch.tensor(l)
        m[i, : len(s)] = 1
    return x, y, m


def build_model(vocab_size: int, pad_id: int, eos_id: int, hidden: int, layers: int, heads: int, ffn: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=1024,
        tie_word_embeddings=True, pad_token_id=pad_id, eos_token_id=eos_id, bos_token_id=None,
        rms_norm_eps=1e-5, attn_implementation="sdpa",
    )
    return LlamaForCausalLM(cfg)


@torch.no_grad()
def evaluate(model, tok, world: World, eos_id: int, pad_id: int, n: int = 256) -> dict[str, float]:
    """Exact-match accuracy of the first answer token (lookup) and of whole answers (copy, listall)."""
    model.eval()
    rng = random.Random("pretrain-eval")
    out: dict[str, float] = {}
    for name in ("lookup", "listall", "copy"):
        exs = []
        for _ in range(n):
            if name == "copy":
                c, a = make_copy(rng, world.lexicon)
            else:
                c, a = make_lookup(rng, world.lexicon, name == "listall")
            exs.append((name, c, a))
        x, y, m = encode_batch(tok, exs, eos_id, pad_id)
        logits = model(input_ids=x, attention_mask=m).logits[:, :-1]
        tgt = y[:, 1:]
        pred = logits.argmax(-1)
        ok = (pred == tgt) | (tgt == -100)
        first = (tgt != -100).float().argmax(-1)
        out[f"{name}_seq_acc"] = ok.all(-1).float().mean().item()
        out[f"{name}_first_acc"] = (pred.gather(1, first[:, None]) == tgt.gather(1, first[:, None])).float().mean().item()
    model.train()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="lrt/assets/tiny-backbone")
    ap.add_argument("--minutes", type=float, default=25.0, help="wall-clock budget for the training loop")
    ap.add_argument("--max-steps", type=int, default=20000, help="stop here (use this, not --minutes, to reproduce exactly)")
    ap.add_argument("--schedule-steps", type=int, default=20000, help="cosine horizon, independent of where we stop")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--hidden", type=int, default=96)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--ffn", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="1 thread: bitwise-reproducible on CPU")
    ap.add_argument("--save-every", type=int, default=250)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    world = World(topic_seed=PRETRAIN_TOPIC_SEED)
    tok = build_tokenizer(out)
    eos_id, pad_id = tok.convert_tokens_to_ids("<|im_end|>"), tok.pad_token_id
    model = build_model(len(tok), pad_id, eos_id, args.hidden, args.layers, args.heads, args.ffn)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"params {n_params}", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    warm, total = 200, args.schedule_steps
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s / total, 1.0))))
    )
    rng = random.Random(f"pretrain:{args.seed}")
    log: list[dict] = []
    budget = args.minutes * 60
    step, win, t_loop = 0, [], time.time()
    model.train()
    while step < args.max_steps and time.time() - t_loop < budget:
        exs = [make_example(rng, world) for _ in range(args.batch)]
        x, y, m = encode_batch(tok, exs, eos_id, pad_id)
        loss = model(input_ids=x, attention_mask=m, labels=y).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        step += 1
        win.append(loss.item())
        if step % 250 == 0:
            ev = evaluate(model, tok, world, eos_id, pad_id, 128) if step % args.save_every == 0 else {}
            rec = {"step": step, "loss": sum(win) / len(win), "elapsed_s": round(time.time() - t_loop, 1), **ev}
            log.append(rec)
            print(json.dumps(rec), flush=True)
            win = []
        if step % args.save_every == 0:
            model.save_pretrained(out, safe_serialization=True)
    final = evaluate(model, tok, world, eos_id, pad_id, 512)
    model.save_pretrained(out, safe_serialization=True)
    summary = {
        "steps": step, "batch": args.batch, "train_seconds": round(time.time() - t_loop, 1),
        "total_seconds": round(time.time() - t0, 1), "params": n_params, "final_eval_512": final,
        "args": vars(args), "tasks": dict(TASKS), "pretrain_topic_seed": PRETRAIN_TOPIC_SEED,
    }
    (out / "pretrain_log.json").write_text(json.dumps({"summary": summary, "log": log}, indent=1))
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
