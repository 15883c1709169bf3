"""`lrt train RECIPE [key=value ...]`: train a reranker (`--nproc-per-node N` re-launches under torchrun)."""
from __future__ import annotations

import argparse
import os


def main(argv: list[str]) -> int:
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
