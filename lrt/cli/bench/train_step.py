"""`lrt bench train-step`: peak memory and tokens/s of lrt's training step vs the naive full-logits step
(`lrt.bench.train_step`)."""
from __future__ import annotations

import argparse


def main(argv: list[str]) -> int:
    from lrt.bench import train_step as t

    d = t.Options()
    p = argparse.ArgumentParser(prog="lrt bench train-step", description=t.__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", default=d.settings, help="comma list of: " + ", ".join(t.SETTINGS))
    p.add_argument("--vocab", type=int, default=d.vocab)
    p.add_argument("--hidden", type=int, default=d.hidden)
    p.add_argument("--layers", type=int, default=d.layers)
    p.add_argument("--heads", type=int, default=d.heads)
    p.add_argument("--intermediate", type=int, default=d.intermediate)
    p.add_argument("--seq", type=int, default=d.seq)
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--chunk-size", type=int, default=d.chunk_size,
                   help="lm loss chunk_size (default: the objective's default)")
    p.add_argument("--untie", action="store_true", help="separate LM head (default: tied, like small Qwen models)")
    p.add_argument("--naive-ce", choices=["targets", "full"], default=d.naive_ce,
                   help="naive LM loss: CE of target rows of the full logits, or log_softmax over all of them (FIRST code)")
    p.add_argument("--grad-ckpt", default=d.grad_ckpt, help="gradient checkpointing: comma list of off, on")
    p.add_argument("--variants", default=d.variants, help="comma list of: " + ", ".join(t.VARIANTS))
    p.add_argument("--first-ids", type=int, default=d.first_ids, help="override the FIRST window (20)")
    p.add_argument("--fullrank-ids", type=int, default=d.fullrank_ids, help="override the fullrank window (100)")
    p.add_argument("--steps", type=int, default=d.steps, help="timed steps per worker")
    p.add_argument("--warmup", type=int, default=d.warmup, help="untimed warm-up steps per worker")
    p.add_argument("--repeats", type=int, default=d.repeats, help="workers per variant, alternating the order")
    p.add_argument("--threads", type=int, default=d.threads, help="torch threads (0: torch default)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default=d.precision,
                   help="bf16: bf16 weights and autocast (train.precision=bf16), as the shipped GPU recipes")
    p.add_argument("--no-table", action="store_true")
    return t.run(t.Options(**vars(p.parse_args(argv))))
