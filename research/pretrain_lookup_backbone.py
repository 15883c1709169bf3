"""Segment-lookup pretraining of the quickstart backbone (lrt/assets/tiny-backbone), resumable.

Why: FIRST fine-tuning needs a model that can tell which identifier's passage holds a query word. In
the FIRST layout the identifier comes before its passage, so that takes two attention hops: each word
learns which identifier it sits under, and the answer position finds the query word's occurrences and
copies what they carry. Trained on ranking alone, a tiny model never leaves the display-order plateau
within the quickstart's budget; a real LLM brings this skill from pretraining. This script gives the
tiny model that skill on data that is NOT the quickstart's: only the vocabulary half the quickstart
never asks about (`lrt.demo.world.vocabulary_split`), no grades, no ranking, no `Passages:` prompt.

Task: letter-tagged segments `[A] w w\\n[B] w\\n...` (2..nmax segments of lmin..lmax words), then
`probes` lookups whose answer is the letter of the one segment holding x (x is there 1-2 times):
`find x [L]`, `x is in [L]`, `where is x ? [L]`, `Query : x Ranking : [L]`, two of them as chat turns
(`... <|im_end|>\\n<|im_start|>assistant\\n[L]`: the answer several tokens after x, behind the turn
markers, as in any chat-formatted prompt), or (a `--direct` share of them, training only) the bare
word `x L`. Loss: cross-entropy on the answer letters, plus a hint:

  attention hint (`--hint`): from each answer position, head 0 of the last layer is trained to put its
  attention on the occurrences of x in the segments (-log of that attention mass). Without it the
  second hop is a chicken-and-egg problem (no signal for finding x until copying pays, and the other
  way round) and every design tried sat at chance or on a 0.65 shortcut for thousands of steps
  (lrt/assets/tiny-backbone/README.md lists them); with it, held-out accuracy passes 0.9 within 1,000.
  The hint is only a loss while pretraining: the saved model is a plain LlamaForCausalLM (SDPA).

The gate (`--gate`, default 0.9) is answer accuracy on 1,024 held-out examples (own random stream,
phrased probes only, no bare-word probes). Also reported, not gated: the same on the quickstart's
vocabulary half, whose words never occur in pretraining.

Every `--save-every` steps the model, optimizer, RNG state and log are written to
`<out>/pretrain_state/` (safetensors / weights-only tensors + JSON), so an interrupted run resumes where
it stopped (the state is removed once a run reaches --max-steps and passes the gate). On one thread
the run is bitwise reproducible; the shipped weights came from:

    .venv/bin/python research/pretrain_lookup_backbone.py --out lrt/assets/tiny-backbone --max-steps 1000
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
PROBES = ["find {x} [", "{x} is in [", "where is {x} ? [", "Query : {x} Ranking : [",
          # the same questions as chat turns: the answer sits several tokens after x, behind the turn markers
          "Query : {x} Ranking : <|im_end|>\n<|im_start|>assistant\n[",
          "<|im_start|>user\nwhere is {x} ?<|im_end|>\n<|im_start|>assistant\n["]


def example(rng: random.Random, tok, words: list[str], nmax: int, probes: int, lmin: int, lmax: int,
            direct: float) -> tuple[list[int], list[int], list[int], list[int]]:
    """(input ids, answer labels, body-word marks, probed word at each answer) for one example."""
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
    toks: list[int] = []
    body: list[int] = []  # 1 at the segment words (where the hint may point), 0 elsewhere
    for j, s in enumerate(segs):
        head, words_ = ids(f"[{LETTERS[j]}]"), ids(" ".join(s))
        toks += head + words_ + ids("\n")
        body += [0] * len(head) + [1] * len(words_) + [0]
    lab = [-100] * len(toks)
    qx = [-1] * len(toks)
    for x, o in zip(px, owner):
        q = ids(x if rng.random() < direct else rng.choice(PROBES).format(x=x))
        toks += q + ids(LETTERS[o]) + ids("]\n")
        lab += [-100] * len(q) + ids(LETTERS[o]) + [-100, -100]
        qx += [-1] * len(q) + ids(x) + [-1, -1]
    body += [0] * (len(toks) - len(body))
    return toks, lab, body, qx


def batch(rng: random.Random, tok, words: list[str], size: int, nmax: int, probes: int, lmin: int, lmax: int,
          direct: float) -> dict[str, torch.Tensor]:
    exs = [example(rng, tok, words, nmax, probes, lmin, lmax, direct) for _ in range(size)]
    T = max(len(e[0]) for e in exs)
    out = {"input_ids": torch.full((size, T), tok.pad_token_id), "labels": torch.full((size, T), -100),
           "attention_mask": torch.zeros((size, T), dtype=torch.long), "body": torch.zeros((size, T), dtype=torch.bool),
           "probed": torch.full((size, T), -1)}
    for i, (t, lab, body, qx) in enumerate(exs):
        n = len(t)
        out["input_ids"][i, :n], out["labels"][i, :n], out["attention_mask"][i, :n] = torch.tensor(t), torch.tensor(lab), 1
        out["body"][i, :n], out["probed"][i, :n] = torch.tensor(body, dtype=torch.bool), torch.tensor(qx)
    return out


def hint_loss(b: dict[str, torch.Tensor], last_layer_attn: torch.Tensor) -> torch.Tensor:
    """-log of the attention mass that head 0 of the last layer puts, from each answer position, on the
    occurrences of the probed word inside the segments. The answer letter at index t is predicted at t-1."""
    bi, ti = (b["probed"] != -1).nonzero(as_tuple=True)
    att = last_layer_attn[bi, 0, ti - 1]  # [answers, T]
    hit = (b["input_ids"][bi] == b["probed"][bi, ti].unsqueeze(1)) & b["body"][bi]
    return -torch.log((att * hit).sum(-1) + 1e-6).mean()


@torch.no_grad()
def accuracy(model, tok, words: list[str], a: argparse.Namespace, n: int, stream: str) -> float:
    """Answer-letter accuracy on `n` held-out examples (own random stream; phrased probes only)."""
    rng = random.Random(f"pretrain-eval:{stream}")
    was = model.training
    model.eval()
    hit = tot = 0
    for start in range(0, n, 64):
        b = batch(rng, tok, words, min(64, n - start), a.nmax, a.probes, a.lmin, a.lmax, 0.0)
        pred = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1].argmax(-1)
        tgt = b["labels"][:, 1:]
        sel = tgt != -100
        hit += int((pred[sel] == tgt[sel]).sum())
        tot += int(sel.sum())
    model.train(was)
    return hit / tot


def build_model(tok, hidden: int, layers: int, heads: int, ffn: int):
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
    ap.add_argument("--out", required=True, help="model directory to write (weights, tokenizer, pretrain_log.json)")
    ap.add_argument("--minutes", type=float, default=1e9, help="wall-clock budget of this invocation")
    ap.add_argument("--max-steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3, help="AdamW, 100 warm-up steps, then constant")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--ffn", type=int, default=256)
    ap.add_argument("--nmax", type=int, default=6, help="segments per example: 2..nmax")
    ap.add_argument("--lmin", type=int, default=1, help="words per segment, at least (fillers added)")
    ap.add_argument("--lmax", type=int, default=6, help="words per segment, at most (unless x's copies need more)")
    ap.add_argument("--probes", type=int, default=4)
    ap.add_argument("--direct", type=float, default=0.5, help="share of bare-word probes `x L` (training only)")
    ap.add_argument("--hint", type=float, default=1.0, help="weight of the attention hint (0: none)")
    ap.add_argument("--gate", type=float, default=0.9)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--save-every", type=int, default=250)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="1 thread: bitwise-reproducible on CPU")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    state_dir = out / "pretrain_state"
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(out)
    words, quickstart_words = vocabulary_split()
    torch.manual_seed(a.seed)
    model = build_model(tok, a.hidden, a.layers, a.heads, a.ffn)
    if a.hint > 0:
        model.set_attn_implementation("eager")  # the hint needs attention weights; saved as sdpa below
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.98), weight_decay=0.01)
    st: dict = {"step": 0, "log": [], "train_seconds": 0.0}
    rng = random.Random(f"pretrain:{a.seed}")
    if (state_dir / "state.json").exists():  # resume: safetensors + weights-only tensors + JSON, nothing executed
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(state_dir / "model.safetensors")))
        opt.load_state_dict(torch.load(state_dir / "optimizer.pt", weights_only=True))
        st = json.loads((state_dir / "state.json").read_text())
        rng.setstate(tuple(v if not isinstance(v, list) else tuple(v) for v in st.pop("rng")))  # type: ignore[arg-type]
        torch.set_rng_state(torch.load(state_dir / "torch_rng.pt", weights_only=True))
        print(f"resumed at step {st['step']}", flush=True)
    model.train()
    t0, run, hint_run = time.time(), [], []

    def save() -> None:
        from safetensors.torch import save_file

        state_dir.mkdir(exist_ok=True)
        save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()},
                  str(state_dir / "model.safetensors"))
        torch.save(opt.state_dict(), state_dir / "optimizer.pt")
        torch.save(torch.get_rng_state(), state_dir / "torch_rng.pt")
        (state_dir / "state.json").write_text(json.dumps({**st, "rng": rng.getstate()}))

    while st["step"] < a.max_steps and time.time() - t0 < a.minutes * 60:
        b = batch(rng, tok, words, a.batch, a.nmax, a.probes, a.lmin, a.lmax, a.direct)
        for g in opt.param_groups:
            g["lr"] = a.lr * min(1.0, (st["step"] + 1) / 100)
        o = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"],
                  output_attentions=a.hint > 0)
        loss = o.loss
        if a.hint > 0:
            h = hint_loss(b, o.attentions[-1])
            loss = loss + a.hint * h
            hint_run.append(h.item())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        st["step"] += 1
        run.append(loss.item())
        if st["step"] % a.eval_every == 0:
            rec = {"step": st["step"], "loss": round(sum(run) / len(run), 4),
                   "heldout_acc": accuracy(model, tok, words, a, 256, f"{a.seed}:progress"),
                   "elapsed_s": round(st["train_seconds"] + time.time() - t0, 1)}
            if hint_run:
                rec["hint_loss"] = round(sum(hint_run) / len(hint_run), 4)
            st["log"].append(rec)
            print(json.dumps(rec), flush=True)
            run, hint_run = [], []
        if st["step"] % a.save_every == 0:
            save()
    st["train_seconds"] = round(st["train_seconds"] + time.time() - t0, 1)
    save()
    gate = accuracy(model, tok, words, a, 1024, f"{a.seed}:gate")
    zero_shot = accuracy(model, tok, quickstart_words, a, 1024, f"{a.seed}:quickstart-half")
    summary = {"steps": st["step"], "train_seconds": st["train_seconds"],
               "params": sum(p.numel() for p in model.parameters()),
               "heldout_lookup_acc": gate, "gate": a.gate, "gate_passed": gate >= a.gate,
               "lookup_acc_quickstart_vocabulary_never_probed": zero_shot,
               "args": {k: v for k, v in vars(a).items() if k not in ("out", "minutes")}}
    if a.hint > 0:
        model.set_attn_implementation("sdpa")
    model.save_pretrained(out, safe_serialization=True)
    (out / "pretrain_log.json").write_text(json.dumps({"summary": summary, "log": st["log"]}, indent=1))
    print(json.dumps(summary), flush=True)
    if not summary["gate_passed"]:
        raise SystemExit(f"gate not passed: held-out lookup accuracy {gate:.4f} < {a.gate}; do not ship these weights "
                         f"(resume with more --max-steps from {state_dir})")
    if st["step"] >= a.max_steps:
        import shutil

        shutil.rmtree(state_dir)  # finished and gated: the resume state (optimizer etc.) is not part of the model


if __name__ == "__main__":
    main()
