"""Documented experiment: FIRST fine-tuning of the tiny backbone on the demo world, measured by nDCG@10.

Why it is kept: it is the evidence behind lrt/assets/tiny-backbone/README.md, and a standalone
reference for lrt's real collator/trainer (same prompt renderer, same answer-position rule, same loss).

Per example: prompt = lrt.data.prompts.render_prompt(tok, template, query, passages); target =
render_target(labels in teacher order)[0] + eos. `prompt + target` is tokenized once with offsets;
the answer position is the token before the one starting at the first identifier character. Scores
s_i = h_ans . W_lm[id(label_i)] (final-normed hidden, tied LM head). Loss = mean token NLL on the
target + rank_weight * weighted RankNet (pairs r_i < r_j, weight 1/(r_i+r_j), softplus(-(s_i-s_j)),
averaged over pairs).

    .venv/bin/python research/tiny_finetune_probe.py --backbone lrt/assets/tiny-backbone --minutes 5
"""
from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F

from lrt.data.prompts import PromptTemplate, identifier_labels, render_prompt, render_target
from lrt.demo.world import World, make_split, list_ndcg

TRAIN_SEED_BASE = 10_000  # training queries come from split seeds >= this; eval uses --eval-seed


def encode(tok: Any, tpl: PromptTemplate, row: dict[str, Any]) -> dict[str, Any]:
    """Token ids, answer index, target-token mask start, identifier ids and teacher ranks for one row."""
    passages = [c["text"] for c in row["candidates"]]
    labels = identifier_labels(tpl.identifiers, len(passages))
    prompt = render_prompt(tok, tpl, row["query"], passages)
    by_doc = {c["docid"]: lab for c, lab in zip(row["candidates"], labels)}
    target = render_target([by_doc[d] for d in row["ranking"]])[0] + tok.eos_token
    enc = tok(prompt + target, add_special_tokens=False, return_offsets_mapping=True)
    first_id_char = len(prompt) + 1  # target starts with "[", the identifier follows
    starts = [a for a, _ in enc["offset_mapping"]]
    id_tok = starts.index(first_id_char)
    tgt_start = starts.index(len(prompt))
    rank = {d: i + 1 for i, d in enumerate(row["ranking"])}
    return {
        "ids": enc["input_ids"], "ans": id_tok - 1, "tgt_start": tgt_start,
        "label_ids": tok.convert_tokens_to_ids(labels), "ranks": [rank[c["docid"]] for c in row["candidates"]],
        "grades": row["relevance"],
    }


def collate(exs: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    T = max(len(e["ids"]) for e in exs)
    B = len(exs)
    x = torch.full((B, T), pad_id)
    m = torch.zeros((B, T), dtype=torch.long)
    y = torch.full((B, T), -100)
    for i, e in enumerate(exs):
        n = len(e["ids"])
        x[i, :n] = torch.tensor(e["ids"])
        m[i, :n] = 1
        y[i, e["tgt_start"] : n] = x[i, e["tgt_start"] : n]
    return {"x": x, "m": m, "y": y}


def first_token_scores(model: Any, hidden: torch.Tensor, exs: list[dict[str, Any]]) -> list[torch.Tensor]:
    """s_i = h_ans . W_lm[id_i] for each example (list, since N may vary)."""
    W = model.get_output_embeddings().weight
    out = []
    for i, e in enumerate(exs):
        h = hidden[i, e["ans"]]
        out.append(W[torch.tensor(e["label_ids"])] @ h)
    return out


def ranknet(s: torch.Tensor, ranks: list[int]) -> torch.Tensor:
    r = torch.tensor(ranks, dtype=torch.float)
    better = r[:, None] < r[None, :]
    w = 1.0 / (r[:, None] + r[None, :])
    l = F.softplus(-(s[:, None] - s[None, :]))
    return (w * l)[better].sum() / better.sum().clamp(min=1)


def loss_fn(model: Any, batch: dict[str, torch.Tensor], exs: list[dict[str, Any]], rank_weight: float):
    out = model.model(input_ids=batch["x"], attention_mask=batch["m"])
    h = out.last_hidden_state
    logits = model.lm_head(h)[:, :-1]
    tgt = batch["y"][:, 1:]
    lm = F.cross_entropy(logits.reshape(-1, logits.size(-1)), tgt.reshape(-1), ignore_index=-100)
    scores = first_token_scores(model, h, exs)
    rn = torch.stack([ranknet(s, e["ranks"]) for s, e in zip(scores, exs)]).mean()
    return lm + rank_weight * rn, lm.detach(), rn.detach()


@torch.no_grad()
def evaluate(model: Any, encoded: list[dict[str, Any]], pad_id: int, bs: int = 64) -> dict[str, float]:
    """Held-out nDCG@10 / top-1 of first-token scores, plus initial and random baselines."""
    model.eval()
    nd, top1, nd_init, nd_rand, rn = [], [], [], [], []
    rng = random.Random("eval-random-order")
    for k in range(0, len(encoded), bs):
        exs = encoded[k : k + bs]
        trunc = [dict(e, ids=e["ids"][: e["ans"] + 1]) for e in exs]  # prompt + "[" suffices
        T = max(len(e["ids"]) for e in trunc)
        x = torch.full((len(trunc), T), pad_id)
        m = torch.zeros_like(x)
        for i, e in enumerate(trunc):
            x[i, : len(e["ids"])] = torch.tensor(e["ids"])
            m[i, : len(e["ids"])] = 1
        h = model.model(input_ids=x, attention_mask=m).last_hidden_state
        for e, s in zip(exs, first_token_scores(model, h, trunc)):
            g = e["grades"]
            order = sorted(range(len(g)), key=lambda i: -s[i].item())
            nd.append(list_ndcg([g[i] for i in order]))
            top1.append(float(g[order[0]] == max(g)))
            nd_init.append(list_ndcg(list(g)))
            sh = list(g)
            rng.shuffle(sh)
            nd_rand.append(list_ndcg(sh))
            rn.append(ranknet(s, e["ranks"]).item())
    model.train()
    return {
        "ndcg10": statistics.mean(nd), "top1": statistics.mean(top1), "ndcg10_initial": statistics.mean(nd_init),
        "ndcg10_random": statistics.mean(nd_rand), "ranknet": statistics.mean(rn), "n_queries": len(nd),
    }


def parse_curriculum(spec: str) -> list[tuple[float, tuple[int, int]]]:
    """'3-5:0.2,5-8:0.5,8-10' -> N ranges up to a fraction of the steps (last one open-ended)."""
    out = []
    for part in spec.split(","):
        rng_s, _, frac = part.partition(":")
        lo, _, hi = rng_s.partition("-")
        out.append((float(frac) if frac else 1e9, (int(lo), int(hi or lo))))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="lrt/assets/tiny-backbone", help="dir, or 'scratch:<dir>' for a random init of that config")
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--max-steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--rank-weight", type=float, default=10.0)
    ap.add_argument("--n-train", default="10", help="curriculum over N, e.g. '3-5:0.2,5-10'")
    ap.add_argument("--n-eval", type=int, default=10)
    ap.add_argument("--eval-queries", type=int, default=500)
    ap.add_argument("--eval-every", type=int, default=0)
    ap.add_argument("--eval-seed", type=int, default=7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()

    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.time()
    path = args.backbone.split("scratch:", 1)[-1]
    tok = AutoTokenizer.from_pretrained(path)
    if args.backbone.startswith("scratch:"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), attn_implementation="sdpa")
    else:
        model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa")
    tpl = PromptTemplate.preset("compact")
    world = World()  # quickstart world: topic_seed=1
    pad_id = tok.pad_token_id
    eval_rows = make_split(args.eval_queries, args.n_eval, args.eval_seed, world=world)
    eval_enc = [encode(tok, tpl, r) for r in eval_rows]
    print(f"eval prompt+target tokens: mean {statistics.mean(len(e['ids']) for e in eval_enc):.0f}", flush=True)
    zero = evaluate(model, eval_enc, pad_id)
    print(json.dumps({"step": 0, **zero}), flush=True)

    cur = parse_curriculum(args.n_train)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    total = args.max_steps
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / args.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s / total, 1.0))))
    )
    rng = random.Random(f"probe:{args.seed}")
    t_loop = time.time()
    step, win, curve = 0, [], []
    model.train()
    while step < args.max_steps and time.time() - t_loop < args.minutes * 60:
        frac = step / total
        lo, hi = next(r for f, r in cur if frac < f)
        n = rng.randint(lo, hi)
        rows = make_split(args.batch, n, TRAIN_SEED_BASE + args.seed * 1_000_000 + step, world=world)
        exs = [encode(tok, tpl, r) for r in rows]
        loss, lm, rn = loss_fn(model, collate(exs, pad_id), exs, args.rank_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        step += 1
        win.append((lm.item(), rn.item()))
        if step % 100 == 0:
            rec = {"step": step, "N": n, "lm": sum(a for a, _ in win) / len(win), "rn": sum(b for _, b in win) / len(win),
                   "elapsed_s": round(time.time() - t_loop, 1)}
            if args.eval_every and step % args.eval_every == 0:
                rec.update({k: v for k, v in evaluate(model, eval_enc[:200], pad_id).items() if k in ("ndcg10", "top1")})
            curve.append(rec)
            print(json.dumps(rec), flush=True)
            win = []
    train_s = time.time() - t_loop
    final = evaluate(model, eval_enc, pad_id)
    res = {"args": vars(args), "steps": step, "train_seconds": round(train_s, 1), "total_seconds": round(time.time() - t0, 1),
           "zero_shot": zero, "final": final, "curve": curve}
    print(json.dumps({"final": final, "steps": step, "train_seconds": res["train_seconds"], "total_seconds": res["total_seconds"]}), flush=True)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
