"""`lrt bench throughput`: tokens/s per GPU and MFU of the FIRST training step (`lrt.bench.throughput`)."""
from __future__ import annotations

import argparse


def main(argv: list[str]) -> int:
    from lrt.bench import throughput as t

    d = t.Options()
    p = argparse.ArgumentParser(prog="lrt bench throughput", description=t.__doc__.split("\n\n")[0])
    p.add_argument("--arch", default=d.arch, choices=sorted(t.ARCHS))
    p.add_argument("--seq", type=int, default=d.seq)
    p.add_argument("--batch", type=int, default=d.batch, help="lists per step (each of --seq tokens)")
    p.add_argument("--steps", type=int, default=d.steps, help="timed steps")
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--attn", default=d.attn, choices=["auto", "sdpa", "flash_attention_2"],
                   help="auto: flash_attention_2 when flash-attn and CUDA are there, else sdpa")
    p.add_argument("--peak-tflops", type=float, default=d.peak_tflops,
                   help="dense bf16 peak the MFU divides by (default: H100/H200 SXM datasheet)")
    p.add_argument("--json", default=d.json, help="also write the record to this file")
    p.add_argument("--allow-cpu", action="store_true", help="run on CPU too (a smoke run; its MFU means nothing)")
    return t.run(t.Options(**vars(p.parse_args(argv))))
