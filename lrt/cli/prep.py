"""`lrt prep`: run a data-prep job (one shard of it), merge finished shards, or tokenise a recipe's data.

    lrt prep JOB.yaml [key=value ...] [--num-shards K --shard-id I] [--force] [--check]
    lrt prep merge OUT_DIR
    lrt prep tokenize RECIPE [key=value ...] [--num-shards K --shard-id I]

The job logic is `lrt.prep.job`'s; the tokenised cache is the training data loader's (`lrt.train.data`).
"""
from __future__ import annotations

import argparse
import logging
import sys

from lrt.errors import LrtError


def main(argv: list[str]) -> int:
    if argv[:1] == ["tokenize"]:
        return _tokenize(argv[1:])
    return _job(argv)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lrt prep", description="Run a data-prep job, or `lrt prep merge OUT_DIR`.")
    ap.add_argument("job", help="job YAML (see data_prep/)")
    ap.add_argument("overrides", nargs="*", help="dotted overrides, e.g. teacher.model=gpt-4o labels.mode=full_repass")
    ap.add_argument("--num-shards", type=int, default=1)
    ap.add_argument("--shard-id", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="redo a finished shard")
    ap.add_argument("--check", action="store_true", help="validate the job and print it; run nothing")
    return ap


def _job(argv: list[str]) -> int:
    """Exit codes: 0 done, 2 job/data error (one clear message), 3 some queries failed (re-run to retry)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        if argv[:1] == ["merge"]:
            if len(argv) == 2 and argv[1] in ("-h", "--help"):
                print("usage: lrt prep merge OUT_DIR\n\nMerge the finished shards of a sharded prep job in OUT_DIR "
                      "into one dataset (run once every `--shard-id` has finished).")
                return 0
            if len(argv) != 2:
                raise LrtError("usage: lrt prep merge OUT_DIR")
            from lrt.prep import output

            print(output.merge(argv[1]))
            return 0
        args = _parser().parse_intermixed_args(argv)
        from lrt.prep.job import check_job, load_job, run_shard

        cfg = load_job(args.job, args.overrides)
        check_job(cfg)
        if args.check:
            print(cfg.model_dump_json(indent=2))
            return 0
        card = run_shard(cfg, num_shards=args.num_shards, shard_id=args.shard_id, force=args.force)
    except LrtError as e:
        print(f"lrt prep: error: {e}", file=sys.stderr)
        return 2
    from lrt.prep.job import summary

    print(summary(card, args.shard_id, args.num_shards, cfg.output.dir))
    if card["failed_queries"]:
        print(f"lrt prep: {len(card['failed_queries'])} queries failed after retries "
              f"(e.g. {card['failed_examples']}); re-run the same command to retry only their missing windows",
              file=sys.stderr)
        return 3
    return 0


def _tokenize(argv: list[str]) -> int:
    """Build the tokenised cache of a recipe ahead of training (optionally one contiguous shard)."""
    p = argparse.ArgumentParser(prog="lrt prep tokenize", description=_tokenize.__doc__)
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", help="dotted overrides, as for lrt train")
    p.add_argument("--num-shards", type=int, default=1)
    p.add_argument("--shard-id", type=int, default=0)
    a = p.parse_intermixed_args(list(argv))
    import torch

    from lrt.config import load_recipe
    from lrt.train.data import cache_root, prepare_data
    from lrt.train.dist import DistEnv
    from lrt.objective.objective import Objective

    if a.num_shards < 1 or not 0 <= a.shard_id < a.num_shards:
        raise LrtError(f"--shard-id {a.shard_id} --num-shards {a.num_shards}: need 0 <= shard-id < num-shards")
    r = load_recipe(a.recipe, a.overrides)
    if not r.data.cache:
        raise LrtError("data.cache is false in this recipe: there is no cache to build (drop data.cache=false)")
    env = DistEnv(rank=0, world=1, local_rank=0, device=torch.device("cpu"))
    d = prepare_data(r, env, Objective.from_recipe(r), shard=(a.num_shards, a.shard_id) if a.num_shards > 1 else None)
    where = cache_root(r)
    if d.rows is None:
        print(f"tokenised shard {a.shard_id}/{a.num_shards} -> {where} (the cache completes when every shard is done)")
    else:
        print(f"tokenised cache ready: {len(d.rows)} lists -> {where}")
    return 0


