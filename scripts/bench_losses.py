"""Thin wrapper: the losses benchmark lives in `lrt.bench.losses` (so `lrt bench losses` works from
an installed package).

    .venv/bin/python scripts/bench_losses.py [--b 32] [--n 100] [--reps 10] [--threads 1]
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lrt.bench.losses import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
