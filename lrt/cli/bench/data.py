"""`lrt bench data`: tokenise + collate throughput, or (`--startup`) the training data start-up
(`lrt.bench.data`)."""
from __future__ import annotations

import argparse


def main(argv: list[str]) -> int:
    from lrt.bench import data as b

    d = b.Options()
    p = argparse.ArgumentParser(prog="lrt bench data", description=b.__doc__.split("\n\n")[0])
    p.add_argument("--settings", default=d.settings, help="comma list of: " + ", ".join(b.SETTINGS))
    p.add_argument("--examples", type=int, default=d.examples, help="lists per measurement")
    p.add_argument("--words", type=int, default=d.words, help="words per passage")
    p.add_argument("--procs", default=d.procs, help="process counts to measure")
    p.add_argument("--repeats", type=int, default=d.repeats, help="best-of repeats per measurement")
    p.add_argument("--no-encode-all", action="store_true", help="skip the datasets.map (encode_all) measurement")
    p.add_argument("--no-table", action="store_true")
    g = p.add_argument_group("start-up (--startup): RSS per rank and start-up time, first run vs cached")
    g.add_argument("--startup", action="store_true", help="measure the training data start-up instead of throughput")
    g.add_argument("--lists", type=int, default=d.lists, help="synthetic FIRST lists (20 passages each)")
    g.add_argument("--modes", default=d.modes, help="legacy (in-memory, no cache) and/or cached")
    g.add_argument("--workdir", default=d.workdir, help="where the data, model and caches go (default: a temp dir)")
    g.add_argument("--first-at", default=d.first_at, help="process counts whose first (uncached) start is measured "
                   "(default: all); the others start from the cache an earlier measurement built")
    g.add_argument("--legacy-src", default=d.legacy_src,
                   help="run the legacy path from another checkout (e.g. a git worktree of the old code)")
    return b.run(b.Options(**vars(p.parse_args(argv))))
