"""`lrt eval --qrels Q --run R [--run R2 ...] [--baseline B]`: trec_eval-exact metrics of TREC runs and paired
tests against a baseline (the semantics are `lrt.evaluate`'s)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lrt.errors import LrtError
from lrt.evaluate import (BINARY_MEASURES, DEFAULT_MEASURES, calc, default_measures, format_table, parse_measures,
                          significance)
from lrt.io.trec import read_qrels, read_run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lrt eval", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Score TREC runs with trec_eval semantics (ir_measures + pytrec_eval).",
        epilog="Averages over queries in run ∩ qrels like trec_eval (use --all-queries for -c).\n"
               "Ties are broken like trec_eval: score descending, then docid descending.\n\n"
               "example:\n  lrt eval --qrels qrels.dl19-passage.txt --run bm25.txt "
               "--run reranked.txt --measures 'nDCG@10,RR(rel=2)@10'")
    p.add_argument("--qrels", required=True, help="TREC qrels file: 'qid iter docid rel'")
    p.add_argument("--run", required=True, action="append", dest="runs", metavar="RUN",
                   help="TREC run 'qid Q0 docid rank score tag'; repeat to compare runs")
    p.add_argument("--measures", default=None,
                   help="comma-separated ir_measures names (default: " + ",".join(DEFAULT_MEASURES) +
                        " on graded qrels, " + ",".join(BINARY_MEASURES) + " on binary ones)")
    p.add_argument("--baseline", metavar="RUN", default=None,
                   help="TREC run to test every --run against: per measure the mean difference, "
                        "wins/ties/losses, paired t and a paired randomization p (20,000 sign flips), "
                        "Holm-adjusted over the runs")
    p.add_argument("--resamples", type=int, default=20000, help="sign flips of the randomization test")
    p.add_argument("--per-query", action="store_true", help="also print every query's values")
    p.add_argument("--all-queries", action="store_true",
                   help="average over all qrels queries, missing ones scoring 0 (trec_eval -c)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def main(argv: list[str]) -> int:
    """`lrt eval`: returns 0, or 2 after printing `error: ...` for a user mistake."""
    args = build_parser().parse_args(argv)
    try:
        qrels = read_qrels(args.qrels)
        measures = parse_measures(args.measures if args.measures is not None else default_measures(qrels))
        if args.resamples < 99:
            raise LrtError(f"--resamples {args.resamples}: use at least 99 (the p-value's floor is 1/(resamples+1))")
        names = [Path(r).name for r in args.runs]
        names = names if len(set(names)) == len(names) else list(args.runs)
        report: dict[str, dict] = {}
        for name, path in zip(names, args.runs):
            run = read_run(path)
            aggregate, by_query = calc(qrels, run, measures, args.all_queries)
            missing, extra = len(set(qrels) - set(run)), len(set(run) - set(qrels))
            if missing or extra:
                print(f"note: {name}: {extra} run queries without qrels ignored; {missing} qrels "
                      f"queries not in run {'score 0' if args.all_queries else 'ignored'}",
                      file=sys.stderr)
            report[name] = {"path": str(path), "queries": len(by_query), "mean": aggregate,
                            **({"per_query": by_query} if args.per_query else {})}
        tests: list[dict[str, str | int | float]] = []
        if args.baseline is not None:
            runs = {n: read_run(pth) for n, pth in zip(names, args.runs)}
            tests = significance(qrels, runs, read_run(args.baseline), measures, args.all_queries,
                                 resamples=args.resamples)
    except LrtError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        query_set = "all_qrels_queries" if args.all_queries else "run_and_qrels"
        print(json.dumps({"measures": [str(m) for m in measures], "query_set": query_set,
                          "runs": report, **({"baseline": {"path": str(args.baseline), "tests": tests}}
                                              if args.baseline is not None else {})}, indent=2))
        return 0
    if args.per_query:
        print(format_table([{"run": n, "qid": q, **v} for n, r in report.items()
                            for q, v in [*r["per_query"].items(), ("all", r["mean"])]]))
    else:
        print(format_table([{"run": n, **r["mean"], "queries": r["queries"]}
                            for n, r in report.items()]))
    if tests:
        print(f"\nagainst the baseline {args.baseline} (two-sided paired randomization test, "
              f"{args.resamples} sign flips; p_holm: Holm-adjusted over the {len(report)} run(s)):")
        print(format_table([{k: (f"{v:.2g}" if k in ("p", "p_holm") else v) for k, v in r.items()}
                            for r in tests]))
    return 0
