"""`lrt` command line: validate | train | quickstart | prep | rerank | eval | export | bench.

User mistakes (`LrtError`) print one clear message and exit 2, never a traceback.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable

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


def _validate(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="lrt validate", description="Validate a recipe without training.")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-5")
    p.add_argument("--no-file-check", action="store_true",
                   help="skip checking that local data files exist (and the model checks, which read them)")
    p.add_argument("--show-prompt", action="store_true", help="print one rendered training sequence and its tokens")
    p.add_argument("--sample", type=int, default=64, help="training lists the model checks encode (default 64)")
    p.add_argument("--max-unknown-share", type=float, default=0.2,
                   help="fail above this share of <unk> tokens in the data's text (default 0.2; warns above 0.01)")
    a = p.parse_intermixed_args(argv)  # options may come before or after the overrides
    from lrt.config import load_recipe

    r = load_recipe(a.recipe, a.overrides, check_files=not a.no_file_check)
    rows = "" if a.no_file_check else _check_data(r)
    checks = None
    if not a.no_file_check:
        from lrt.train.preflight import preflight

        checks = preflight(r, sample=max(1, a.sample), max_unknown_share=a.max_unknown_share)
    terms = ", ".join(f"{t.weight} x {t.name}" for t in r.loss)
    from lrt.families import of_recipe

    scoring = of_recipe(r).validate_text(r)
    print(f"ok: {a.recipe} (model {r.model.name_or_path}; loss {terms}; {scoring}){rows}")
    if checks is not None:
        for line in checks.lines:
            print(f"  {line}")
        for w in checks.warnings:
            print(f"warning: {w}", file=sys.stderr)
        if a.show_prompt and checks.prompt is not None:
            print(f"--- one training sequence ({checks.prompt_tokens} tokens) ---\n{checks.prompt}\n---")
    return 0


def _check_data(r) -> str:  # noqa: ANN001 - a Recipe
    """Every row of the local train/eval data, streamed, as training would read it (file:line errors)."""
    from pathlib import Path

    from lrt.config import resolve_path
    from lrt.data.prompts import max_candidates
    from lrt.data.schema import validate_source

    from lrt.losses.registry import TEACHER_SCORE_LOSSES

    limit = None if r.data.window else max_candidates(r.identifier_scheme())
    distill = [t.name for t in r.loss if t.name in TEACHER_SCORE_LOSSES]  # need the train lists' teacher_scores
    out = []
    for key, src in (("data.train", r.data.train), ("eval data", r.eval.data or r.data.eval)):
        if src and Path(resolve_path(src)).exists():  # hub ids are left to `datasets` at training time
            n, rep = validate_source(resolve_path(src), on_invalid=r.data.on_invalid, max_candidates=limit,
                                     split=r.data.split, need_teacher_scores=distill if key == "data.train" else ())
            out.append(f"{key}: {n} valid rows" + (f", {rep.skipped} skipped" if rep.skipped else ""))
    return f"; {'; '.join(out)}" if out else ""


def _train(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="lrt train", description="Train a reranker from a recipe.")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-5 data.train=x.jsonl")
    p.add_argument("--nproc-per-node", type=int, default=None, help="re-launch under torchrun with N processes")
    p.add_argument("--nnodes", type=int, default=1)
    a = p.parse_intermixed_args(argv)  # options may come before or after the overrides
    from lrt.config import load_recipe

    from lrt.launch import dry_run

    relaunch = bool(a.nproc_per_node) and "LOCAL_RANK" not in os.environ
    # validate before spawning anything; a dry run only prints the command, so data need not exist yet
    recipe = load_recipe(a.recipe, a.overrides, check_files=not (relaunch and dry_run()))
    if relaunch:
        from lrt.launch import relaunch_torchrun

        return relaunch_torchrun(a.recipe, a.overrides, a.nproc_per_node, a.nnodes, recipe.output_dir)
    from lrt.workflows.run import train

    res = train(recipe)
    if res.eval_history and int(os.environ.get("RANK", "0")) == 0:
        from lrt.train.evaluation import headline_keys

        last = res.eval_history[-1]
        key, init = headline_keys(last)  # eval/nDCG@10 (full qrels) or eval/nDCG@10_candidates / _teacher
        print(f"{key} {last[key]:.4f} (initial order {last[init]:.4f})")
    if res.final_dir and int(os.environ.get("RANK", "0")) == 0:
        print(f"exported: {res.final_dir}")
    return 0


def _lazy(module: str, fn: str = "main") -> Callable[[list[str]], int]:
    def run(argv: list[str]) -> int:
        import importlib

        return int(getattr(importlib.import_module(module), fn)(argv) or 0)

    return run


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "validate": _validate,
    "train": _train,
    "quickstart": _lazy("lrt.workflows.quickstart"),
    "prep": lambda argv: (_lazy("lrt.train.data", "tokenize_main")(argv[1:]) if argv[:1] == ["tokenize"]
                          else _lazy("lrt.prep.job")(argv)),
    "rerank": _lazy("lrt.rerank_cli"),
    "eval": _lazy("lrt.evaluate"),
    "export": _lazy("lrt.export_cli"),
    "bench": _lazy("lrt.bench"),
    "recipes": _lazy("lrt.recipes_cli"),
    "plot": _lazy("lrt.plot"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpx2", "datasets", "DeepSpeed", "torch.distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if argv[0] in ("-V", "--version"):
        from lrt import __version__

        print(f"lrt {__version__}")
        return 0
    if not sys.stderr.isatty():  # Slurm/CI logs: no carriage-return redraws from HF libraries' bars
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers follows huggingface_hub
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        import difflib

        hint = difflib.get_close_matches(cmd, list(COMMANDS), n=1)
        print(f"error: unknown command {cmd!r}" + (f" (did you mean {hint[0]!r}?)" if hint else ""), file=sys.stderr)
        print(USAGE, file=sys.stderr)
        return 2
    try:
        rc = COMMANDS[cmd](rest)
        sys.stdout.flush()  # inside the try: a closed pipe surfaces here, not at interpreter exit
        return rc
    except BrokenPipeError:  # `lrt eval ... | head`: the reader left; stop quietly like any Unix tool
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush does not raise again
        return 141
    except LrtError as e:
        print(f"error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)  # 2, or 75 for a preempted (checkpointed) training run


if __name__ == "__main__":
    sys.exit(main())
