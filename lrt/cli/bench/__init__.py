"""`lrt bench NAME [args]`: one module per benchmark here, each the flags of its library module in
`lrt.bench`; NAME is looked up in `lrt.cli.BENCH`, the bench part of the one dispatch table."""
from __future__ import annotations

import sys

from lrt.cli import BENCH, run

USAGE = """lrt bench <subcommand> [args]

subcommands:
  train-step   peak memory and tokens/s: lrt's training step vs the naive full-logits step
  data         tokenise + collate listwise examples: examples/s with 1 and 2 processes
  rerank       reranking throughput (lrt bench rerank -h)
  losses       ranking-loss speed vs per-sample loops (lrt bench losses -h)
  throughput   tokens/s per GPU and MFU of the FIRST training step on a real-size config (CUDA)
"""


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in BENCH:
        print(f"error: unknown bench {cmd!r}; choose one of {', '.join(BENCH)}", file=sys.stderr)
        return 2
    return run(BENCH[cmd], rest)
