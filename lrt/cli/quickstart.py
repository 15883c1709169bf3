"""`lrt quickstart [--out DIR] [--mode first_token|pointwise]`: the offline demo, end to end (`lrt.workflows.quickstart`)."""
from __future__ import annotations

import argparse


def main(argv: list[str]) -> int:
    import lrt.workflows.quickstart as quickstart

    d = quickstart.Options()  # the defaults
    p = argparse.ArgumentParser(prog="lrt quickstart", description=quickstart.__doc__)
    p.add_argument("--out", default=d.out, help="run directory (data, checkpoints, export)")
    p.add_argument("--mode", choices=sorted(quickstart.RECIPES), default=d.mode,
                   help="first_token: FIRST listwise reranker (default); pointwise: yes/no pair scorer, same world")
    p.add_argument("--recipe", default=d.recipe, help="recipe to run (default: the shipped one for --mode)")
    p.add_argument("--max-steps", type=int, default=d.max_steps,
                   help="cap training at N steps (and the data at what they use): a short smoke run of the pipeline")
    p.add_argument("overrides", nargs="*", help="recipe overrides, e.g. train.max_steps=100")
    a = p.parse_args(argv)
    return quickstart.run(quickstart.Options(**vars(a)))
