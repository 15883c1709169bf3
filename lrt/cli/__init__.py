"""`lrt` command line: validate | train | quickstart | prep | rerank | eval | export | plot | bench | recipes.

The top layer: one module per command under `lrt.cli`, each with `main(argv) -> int`, reached through
the one dispatch table below (`COMMANDS`, with `BENCH` for the subcommands of `lrt bench`).
Command modules are imported only when their command runs, and they import the heavy libraries
(torch, transformers, the trainer) inside `main`, so `lrt --help` and `lrt eval` stay fast.
User mistakes (`LrtError`) print one clear message and exit 2, never a traceback.
"""
from __future__ import annotations

import logging
import os
import sys

from lrt.errors import LrtError

USAGE = """lrt <command> [args]

commands:
  validate RECIPE [key=value ...]   check a recipe (types, unknown keys, conflicts, files) without training
  train RECIPE [key=value ...]      train (add --nproc-per-node N to re-launch under torchrun)
  quickstart [--out DIR]            generate the demo data, train the tiny reranker, export, evaluate
  prep JOB.yaml [key=value ...]     build listwise labels with a teacher / import public formats
  prep tokenize RECIPE [...]        build the tokenised data cache ahead of training (--num-shards/--shard-id)
  rerank ...                        rerank a TREC run with an exported model (lrt rerank -h)
  eval --qrels Q --run R [--baseline B]  trec_eval-exact metrics; paired tests vs a baseline (lrt eval -h)
  export RUN_DIR --out DIR          merge LoRA and write a Hugging Face reranker checkpoint
  plot RUN_DIR [RUN_DIR ...]        loss terms, LR, grad norm and eval nDCG of runs, overlaid (PNG)
  bench ...                         benchmarks (lrt bench -h)
  recipes list | copy NAME DEST | reference   shipped recipes/prep jobs/launch files; copy one out; every recipe key

options:
  -V, --version                     print lrt's version
"""

# THE dispatch table: `lrt NAME` -> the module whose main(argv) runs it ...
COMMANDS: dict[str, str] = {
    "validate": "lrt.cli.validate",
    "train": "lrt.cli.train",
    "quickstart": "lrt.cli.quickstart",
    "prep": "lrt.cli.prep",
    "rerank": "lrt.cli.rerank",
    "eval": "lrt.cli.eval",
    "export": "lrt.cli.export",
    "bench": "lrt.cli.bench",
    "recipes": "lrt.cli.recipes",
    "plot": "lrt.cli.plot",
}
# ... and `lrt bench NAME` -> the module of that benchmark (`lrt.cli.bench` looks it up here)
BENCH: dict[str, str] = {
    "train-step": "lrt.cli.bench.train_step",
    "data": "lrt.cli.bench.data",
    "rerank": "lrt.cli.bench.rerank",
    "losses": "lrt.cli.bench.losses",
    "throughput": "lrt.cli.bench.throughput",
}


def run(module: str, argv: list[str]) -> int:
    """Import one command module and run its main; a module absent from this checkout is one error line."""
    import importlib

    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module:  # a real missing dependency inside the command: show it
            raise
        print(f"error: {module} is not part of this checkout yet", file=sys.stderr)
        return 2
    return int(mod.main(argv) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpx2", "datasets", "DeepSpeed", "torch.distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if argv[0] in ("-V", "--version"):
        from lrt.version import __version__

        print(f"lrt {__version__}")
        return 0
    if not sys.stderr.isatty():  # Slurm/CI logs: no carriage-return redraws from HF libraries' bars
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers follows huggingface_hub
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        from lrt.suggest import did_you_mean

        print(f"error: unknown command {cmd!r}" + did_you_mean(cmd, COMMANDS), file=sys.stderr)
        print(USAGE, file=sys.stderr)
        return 2
    try:
        rc = run(COMMANDS[cmd], rest)
        sys.stdout.flush()  # inside the try: a closed pipe surfaces here, not at interpreter exit
        return rc
    except BrokenPipeError:  # `lrt eval ... | head`: the reader left; stop quietly like any Unix tool
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush does not raise again
        return 141
    except LrtError as e:
        print(f"error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)  # 2, or 75 for a preempted (checkpointed) training run
