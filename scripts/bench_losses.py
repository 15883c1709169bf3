"""Benchmark: vectorised ranking losses vs naive Python-loop references (forward + backward).

Why: the losses sit in the inner training loop; a per-pair Python loop over B x N(N-1)/2 pairs
would cost seconds per step. Acceptance: every loss >= 10x faster than its loop reference.

The loop references are the test references in tests/test_losses_ranking.py (one list at a time,
explicit loops over pairs/positions, autograd through scalar tensor ops), so what is timed is
exactly what the tests trust. Both sides run in this process, on the same inputs, fp32, CPU.

    .venv/bin/python scripts/bench_losses.py [--b 32] [--n 100] [--reps 10] [--threads 1]
    lrt bench losses [same args]

Prints one JSON line per loss, then a summary table; exits 1 if any ratio is < 10 or the
two sides disagree (relative difference of the summed loss >= 1e-4).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lrt.losses import RANKING_LOSSES  # noqa: E402


def _load_references():
    """Import tests/test_losses_ranking.py as a module to reuse its `ref_batch`."""
    spec = importlib.util.spec_from_file_location("_loss_refs", ROOT / "tests" / "test_losses_ranking.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _fwd_bwd(fn: Callable[[torch.Tensor], torch.Tensor], scores: torch.Tensor) -> tuple[float, float]:
    """(seconds for forward + backward, loss value)."""
    x = scores.detach().clone().requires_grad_(True)
    start = time.perf_counter()
    loss = fn(x).sum()
    loss.backward()
    return time.perf_counter() - start, loss.item()


def _median_run(fn: Callable[[torch.Tensor], torch.Tensor], scores: torch.Tensor, reps: int) -> tuple[float, float]:
    runs = [_fwd_bwd(fn, scores) for _ in range(reps)]
    return statistics.median(t for t, _ in runs), runs[-1][1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--b", type=int, default=32)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--reps", type=int, default=10, help="timed repetitions of the vectorised loss (median)")
    ap.add_argument("--loop-reps", type=int, default=1, help="repetitions of the loop reference (median)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (shared machine: default 1)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    refs = _load_references()

    b, n = args.b, args.n
    scores = torch.randn(b, n)
    ranks = torch.argsort(torch.rand(b, n), dim=-1) + 1  # a random strict permutation per list
    rows = []
    for name, fn in RANKING_LOSSES.items():
        fast = lambda x, fn=fn: fn(x, ranks, None, reduction="sum")  # noqa: E731
        slow = lambda x, name=name: refs.ref_batch(name, x, ranks)  # noqa: E731
        _median_run(fast, scores, 2)  # warm-up (allocator, dispatch caches)
        t_fast, v_fast = _median_run(fast, scores, args.reps)
        t_slow, v_slow = _median_run(slow, scores, args.loop_reps)
        # same numbers on both sides, or the comparison is meaningless
        rel_diff = abs(v_fast - v_slow) / max(abs(v_slow), 1e-12)
        row = {
            "loss": name,
            "B": b,
            "N": n,
            "vectorised_ms": round(t_fast * 1e3, 3),
            "loop_ms": round(t_slow * 1e3, 1),
            "speedup": round(t_slow / t_fast, 1),
            "loss_value": round(v_fast, 6),
            "rel_diff_vs_loop": float(f"{rel_diff:.2e}"),
            "threads": args.threads,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)

    print(f"\n{'loss':<12} {'vectorised ms':>14} {'loop ms':>10} {'speedup':>9}  ok")
    for r in rows:
        ok = r["speedup"] >= 10
        print(f"{r['loss']:<12} {r['vectorised_ms']:>14.3f} {r['loop_ms']:>10.1f} {r['speedup']:>8.1f}x  {'yes' if ok else 'NO'}")
    return 0 if all(r["speedup"] >= 10 and r["rel_diff_vs_loop"] < 1e-4 for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
