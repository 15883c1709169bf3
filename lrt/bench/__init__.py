"""`lrt bench`: benchmarks that back lrt's performance claims with numbers.

Subcommands are imported lazily (each pulls in torch/transformers or another engineer's code),
so `lrt bench -h` is instant and a missing optional benchmark fails only when it is asked for.
"""
from __future__ import annotations

import importlib
import sys
from typing import Callable

USAGE = """lrt bench <subcommand> [args]

subcommands:
  train-step   peak memory and tokens/s: lrt's training step vs the naive full-logits step
  data         tokenise + collate listwise examples: examples/s with 1 and 2 processes
  rerank       reranking throughput (lrt bench rerank -h)
  losses       ranking-loss speed vs per-sample loops (lrt bench losses -h)
  throughput   tokens/s per GPU and MFU of the FIRST training step on a real-size config (CUDA)
"""

def _module(name: str) -> Callable[[list[str]], int]:
    def run(argv: list[str]) -> int:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:  # a real missing dependency inside the benchmark: show it
                raise
            print(f"error: {name} is not part of this checkout yet", file=sys.stderr)
            return 2
        return int(mod.main(argv) or 0)

    return run


SUBCOMMANDS: dict[str, Callable[[list[str]], int]] = {
    "train-step": _module("lrt.bench.train_step"),
    "data": _module("lrt.bench.data"),
    "rerank": _module("lrt.bench.rerank"),
    "losses": _module("lrt.bench.losses"),
    "throughput": _module("lrt.bench.throughput"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in SUBCOMMANDS:
        print(f"error: unknown bench {cmd!r}; choose one of {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        return 2
    return SUBCOMMANDS[cmd](rest)


if __name__ == "__main__":
    sys.exit(main())
