"""`lrt eval`: trec_eval-compatible evaluation built on ir_measures (pytrec_eval provider).

Two conventions are pinned here, because the libraries disagree and the numbers shift with them:
- Query set: trec_eval (no `-c`) averages over queries in run ∩ qrels; ir_measures alone scores
  qrels queries missing from the run as 0 (`-c`). Default is trec_eval's run ∩ qrels; pass
  `all_queries=True` / `--all-queries` for `-c`. (The shared DL19/DL20 runs cover every qrels
  query, so both give the published 0.7255 / 0.5058 / 0.4796 nDCG@10.)
- Ties: every run is put in trec_eval order (score desc, docid desc) and re-scored n..1 before
  ir_measures sees it; its msmarco provider (used for `RR@k`) would otherwise sort ties by docid
  ascending, unlike pytrec_eval.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from ir_measures import Measure

from lrt.errors import LrtError
from lrt.io.trec import read_qrels, read_run
from lrt.measures import (BINARY_MEASURES, DEFAULT_MEASURES, PerQuery, QrelsLike, RunLike,  # noqa: F401
                          _calc, evaluate, ndcg_at_k, parse_measures, per_query_ndcg)  # (re-exported: lrt.evaluate.*)


def compare(qrels: QrelsLike, runs: Mapping[str, RunLike],
            measures: Sequence[str | Measure] | str = DEFAULT_MEASURES,
            all_queries: bool = False) -> list[dict[str, str | int | float]]:
    """One row per run ({"run", measure..., "queries"}) so systems line up side by side."""
    rows: list[dict[str, str | int | float]] = []
    for name, run in runs.items():
        aggregate, by_query = _calc(qrels, run, measures, all_queries)
        rows.append({"run": name, **aggregate, "queries": len(by_query)})
    return rows


def format_table(rows: Sequence[Mapping[str, object]], digits: int = 4) -> str:
    """Aligned plain-text table (floats to `digits` decimals, text left, numbers right)."""
    if not rows:
        return ""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    cell = [[f"{v:.{digits}f}" if isinstance(v, float) else str(v) for v in
             (r.get(c, "") for c in cols)] for r in rows]
    widths = [max(len(c), *(len(r[i]) for r in cell)) for i, c in enumerate(cols)]
    numeric = [all(isinstance(r.get(c), (int, float)) for r in rows) for c in cols]

    def fmt(vals: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if n else v.ljust(w)
                         for v, w, n in zip(vals, widths, numeric)).rstrip()
    return "\n".join([fmt(cols), fmt(["-" * w for w in widths]), *(fmt(r) for r in cell)])


def paired_test(a: Mapping[str, float], b: Mapping[str, float], resamples: int = 20000,
                seed: int = 0) -> dict[str, float]:
    """Two-sided paired randomization (sign-flip) test of mean(a - b) over the queries both score.

    Why this test: it assumes nothing about the distribution of per-query differences (nDCG
    differences are bounded and lumpy), and it is what IR papers use (Smucker et al., CIKM 2007).
    Returns the mean difference, the paired t statistic, the p-value ((hits + 1) / (resamples + 1),
    so never 0) and the wins/losses/ties counts.
    """
    import numpy as np

    qids = sorted(set(a) & set(b))
    if len(qids) < 2:
        raise LrtError(f"paired_test: needs at least 2 common queries, got {len(qids)}")
    d = np.array([a[q] - b[q] for q in qids], dtype=np.float64)
    obs = abs(d.mean())
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, resamples, 1000):  # 1,000 sign vectors at a time: bounded memory
        n = min(1000, resamples - start)
        signs = rng.integers(0, 2, size=(n, d.size), dtype=np.int8) * 2 - 1
        hits += int((np.abs(signs @ d / d.size) >= obs - 1e-12).sum())
    sd = d.std(ddof=1)
    t = float(d.mean() / (sd / math.sqrt(d.size))) if sd > 0 else (math.inf if d.mean() else 0.0)
    return {"queries": int(d.size), "mean_diff": float(d.mean()), "t": t, "p": (hits + 1) / (resamples + 1),
            "wins": int((d > 0).sum()), "losses": int((d < 0).sum()), "ties": int((d == 0).sum())}


def default_measures(qrels: QrelsLike) -> tuple[str, ...]:
    """The default measures that fit these qrels: DL19-style graded (a grade >= 2 exists) or binary."""
    graded = any(float(rel) >= 2 for docs in qrels.values() for rel in docs.values())
    return DEFAULT_MEASURES if graded else BINARY_MEASURES


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1), in the input order.

    Why Holm: several runs tested against one baseline are a family of tests; Holm controls the
    family-wise error like Bonferroni but is uniformly more powerful, and assumes no independence.
    """
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def significance(qrels: QrelsLike, runs: Mapping[str, RunLike], baseline: RunLike,
                 measures: Sequence[str | Measure] | str = DEFAULT_MEASURES, all_queries: bool = False,
                 resamples: int = 20000, seed: int = 0) -> list[dict[str, str | int | float]]:
    """Every run against one baseline, per measure: the paired test over the queries both score
    (`paired_test`: mean difference, wins/ties/losses, paired t, randomization p) and the Holm-adjusted
    p over the runs (one family per measure)."""
    ms = [str(m) for m in parse_measures(measures)]
    _, base = _calc(qrels, baseline, ms, all_queries)
    rows: list[dict[str, str | int | float]] = []
    for name, run in runs.items():
        _, pq = _calc(qrels, run, ms, all_queries)
        for m in ms:
            res = paired_test({q: v[m] for q, v in pq.items()}, {q: v[m] for q, v in base.items()},
                              resamples=resamples, seed=seed)
            rows.append({"run": name, "measure": m, "diff": res["mean_diff"], "wins": res["wins"],
                         "ties": res["ties"], "losses": res["losses"], "t": res["t"], "p": res["p"],
                         "queries": res["queries"]})
    for m in ms:
        family = [r for r in rows if r["measure"] == m]
        for r, adj in zip(family, holm([float(r["p"]) for r in family])):
            r["p_holm"] = adj
    return rows


def _parser() -> argparse.ArgumentParser:
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


def main(argv: list[str] | None = None) -> int:
    """`lrt eval`: returns 0, or 2 after printing `error: ...` for a user mistake."""
    args = _parser().parse_args(argv)
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
            aggregate, by_query = _calc(qrels, run, measures, args.all_queries)
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


if __name__ == "__main__":
    raise SystemExit(main())
