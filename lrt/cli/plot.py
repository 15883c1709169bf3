"""`lrt plot RUN_DIR [RUN_DIR ...] [--out DIR] [--label L ...]`: overlay the curves of runs (PNG)."""
from __future__ import annotations

import argparse
from pathlib import Path

from lrt.errors import LrtError


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="lrt plot", description="Plot loss terms, LR, grad norm and eval nDCG of one or "
                                "more runs (overlaid) from their metrics.jsonl.")
    p.add_argument("runs", nargs="+", help="lrt run directories")
    p.add_argument("--out", default=None, help="where to write the PNGs (default: RUN/plots for one run, ./lrt-plots otherwise)")
    p.add_argument("--label", action="append", default=None, help="legend label per run (repeat, in order)")
    a = p.parse_args(argv)
    from lrt.plot import plot_runs

    if a.label and len(a.label) != len(a.runs):
        raise LrtError(f"--label given {len(a.label)} times for {len(a.runs)} runs: give one per run or none")
    out = a.out or (Path(a.runs[0]) / "plots" if len(a.runs) == 1 else Path("lrt-plots"))
    paths = plot_runs(a.runs, out, a.label)
    if not paths:
        print(f"nothing to plot: no training or evaluation records in {', '.join(a.runs)}")
        return 1
    for path in paths:
        print(path)
    return 0
