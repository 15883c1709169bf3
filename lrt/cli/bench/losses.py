"""`lrt bench losses`: ranking-loss speed vs per-sample loops (`lrt.bench.losses`)."""
from __future__ import annotations

import argparse


def main(argv: list[str]) -> int:
    from lrt.bench import losses

    d = losses.Options()
    ap = argparse.ArgumentParser(prog="lrt bench losses", description=losses.__doc__.splitlines()[0])
    ap.add_argument("--b", type=int, default=d.b)
    ap.add_argument("--n", type=int, default=d.n)
    ap.add_argument("--reps", type=int, default=d.reps, help="timed repetitions of the vectorised loss (median)")
    ap.add_argument("--loop-reps", type=int, default=d.loop_reps, help="repetitions of the loop reference (median)")
    ap.add_argument("--threads", type=int, default=d.threads, help="torch threads (shared machine: default 1)")
    return losses.run(losses.Options(**vars(ap.parse_args(argv))))
