"""The measure functions with trec_eval semantics, shared by in-training evaluation (lrt.train) and
`lrt eval` (lrt.evaluate): ir_measures with the pytrec_eval provider, and an exact nDCG@k for float grades.


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

import math
from collections.abc import Mapping, Sequence
from typing import Literal, Union, overload

import ir_measures
from ir_measures import Measure

from lrt.errors import DataError, LrtError
from lrt.io.trec import trec_order

DEFAULT_MEASURES: tuple[str, ...] = ("nDCG@1", "nDCG@5", "nDCG@10", "RR(rel=2)@10", "R(rel=2)@100")
# Binary qrels (every grade 0/1): RR(rel=2) and R(rel=2) would read 0, so the defaults count grade 1.
BINARY_MEASURES: tuple[str, ...] = ("nDCG@1", "nDCG@5", "nDCG@10", "RR@10", "R@100")
RunLike = Mapping[str, Union[Sequence[str], Sequence[tuple[str, float]], Mapping[str, float]]]
QrelsLike = Mapping[str, Mapping[str, int]]
PerQuery = dict[str, dict[str, float]]
# What ir_measures raises for unknown names / bad params (validate_params uses assert).
_BAD_MEASURE = (NameError, ValueError, TypeError, KeyError, AssertionError)


def parse_measures(spec: str | Sequence[str | Measure]) -> list[Measure]:
    """Parse "nDCG@10,RR(rel=2)@10" (commas inside parentheses kept) or trec names (ndcg_cut.10)."""
    if isinstance(spec, str):
        parts, depth, cur = [], 0, ""
        for ch in spec:
            depth += (ch == "(") - (ch == ")")
            if ch == "," and depth == 0:
                parts.append(cur)
                cur = ""
            else:
                cur += ch
        spec = [p.strip() for p in [*parts, cur] if p.strip()]
    out: list[Measure] = []
    for item in spec:
        if isinstance(item, Measure):
            out.append(item)
            continue
        try:
            out.append(ir_measures.parse_measure(item))
            out[-1].validate_params()
        except _BAD_MEASURE:
            try:
                out.extend(ir_measures.parse_trec_measure(item))
            except _BAD_MEASURE:
                raise LrtError(f"unknown measure {item!r}; use ir_measures names such as "
                               "nDCG@10, RR(rel=2)@10, R(rel=2)@100, P@5, AP") from None
    if not out:
        raise LrtError("no measures given; e.g. --measures 'nDCG@10,RR(rel=2)@10'")
    return list(dict.fromkeys(out))


def _scored(qid: str, docs: object) -> dict[str, float]:
    """One query's ranking as {docid: n..1}: trec_eval order made tie-free for every provider."""
    if isinstance(docs, Mapping):
        docs = list(docs.items())
    if not isinstance(docs, Sequence) or isinstance(docs, str):
        raise DataError(f"run query {qid!r}: expected a list of docids or (docid, score) pairs")
    if docs and not isinstance(docs[0], str):  # (docid, score) pairs: apply trec_eval order
        try:
            docs = [d for d, _ in trec_order([(str(d), float(s)) for d, s in docs])]
        except (TypeError, ValueError):
            raise DataError(f"run query {qid!r}: expected docids or (docid, score) pairs, "
                            f"got e.g. {docs[0]!r}") from None
    if len(set(docs)) != len(docs):
        raise DataError(f"run query {qid!r}: a docid appears twice; trec_eval rejects duplicates")
    return {str(d): float(len(docs) - i) for i, d in enumerate(docs)}


def _calc(qrels: QrelsLike, run: RunLike, measures: Sequence[str | Measure] | str,
          all_queries: bool = False) -> tuple[dict[str, float], PerQuery]:
    """(aggregate, per-query) results; measures pytrec_eval supports go to it explicitly."""
    ms = parse_measures(measures)
    scored = {q: _scored(q, docs) for q, docs in run.items() if q in qrels and len(docs)}
    if not scored:
        raise LrtError(f"run and qrels share no query ids (run e.g. {list(run)[:3]}, qrels e.g. "
                       f"{list(qrels)[:3]}); check that you paired the right files")
    qids = list(qrels) if all_queries else [q for q in qrels if q in scored]
    int_qrels: dict[str, dict[str, int]] = {}
    for q in qids:
        for d, rel in qrels[q].items():
            if float(rel) != int(rel):
                raise DataError(f"qrels query {q!r} doc {d!r}: grade {rel!r} is not an integer; "
                                "trec_eval needs integer grades (use ndcg_at_k for float grades)")
        int_qrels[q] = {d: int(rel) for d, rel in qrels[q].items()}
    pte = [m for m in ms if ir_measures.pytrec_eval.supports(m)]
    rest = [m for m in ms if m not in pte]
    per_query: PerQuery = {q: {} for q in qids}
    for group, provider in ((pte, ir_measures.pytrec_eval), (rest, ir_measures)):
        try:
            for metric in provider.iter_calc(group, int_qrels, scored) if group else ():
                per_query[metric.query_id][str(metric.measure)] = float(metric.value)
        except ValueError as e:  # e.g. a measure whose provider is not installed
            raise LrtError(f"cannot compute {', '.join(map(str, group))}: {e}") from None
    aggregate: dict[str, float] = {}
    for m in ms:
        agg = m.aggregator()
        for q in qids:
            agg.add(per_query[q][str(m)])
        aggregate[str(m)] = float(agg.result())
    return aggregate, per_query


@overload
def evaluate(qrels: QrelsLike, run: RunLike, measures: Sequence[str | Measure] | str = ...,
             per_query: Literal[False] = ..., all_queries: bool = ...) -> dict[str, float]: ...


@overload
def evaluate(qrels: QrelsLike, run: RunLike, measures: Sequence[str | Measure] | str = ...,
             *, per_query: Literal[True], all_queries: bool = ...) -> PerQuery: ...


def evaluate(qrels: QrelsLike, run: RunLike,
             measures: Sequence[str | Measure] | str = DEFAULT_MEASURES,
             per_query: bool = False, all_queries: bool = False) -> dict[str, float] | PerQuery:
    """Mean {measure: value}, or {qid: {measure: value}} with per_query=True (trec_eval -q).

    `run` maps qid to ranked docids, (docid, score) pairs or {docid: score}.
    """
    aggregate, by_query = _calc(qrels, run, measures, all_queries)
    return by_query if per_query else aggregate


def ndcg_at_k(rankings: Mapping[str, Sequence[str]], qrels_like: Mapping[str, Mapping[str, float]],
              k: int = 10) -> float:
    """trec_eval nDCG@k in plain Python, for in-training validation on float (synthetic) grades.

    pytrec_eval only takes integer grades and rounding floats to ints changes the number, so
    this computes it exactly: linear gain, log2(rank+1) discount, only grades > 0 count, IDCG from
    all judged docs of the query, 0 when IDCG = 0, mean over queries in rankings ∩ qrels.
    On integer grades it equals `evaluate(..., ["nDCG@k"])` (tested on DL19).
    """
    if k < 1:
        raise ValueError(f"ndcg_at_k: k must be >= 1, got {k}")
    qids = [q for q in rankings if q in qrels_like and len(rankings[q])]
    if not qids:
        raise LrtError("ndcg_at_k: rankings and qrels share no query ids")
    total = 0.0
    for q in qids:
        grades, ranked = qrels_like[q], rankings[q]
        if len(set(ranked)) != len(ranked):
            raise DataError(f"ranking for query {q!r} repeats a docid")
        gains = [grades.get(d, 0.0) for d in ranked[:k]]
        dcg = sum(g / math.log2(i + 2) for i, g in enumerate(gains) if g > 0)
        ideal = sorted((g for g in grades.values() if g > 0), reverse=True)[:k]
        idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
        total += dcg / idcg if idcg > 0 else 0.0
    return total / len(qids)


def per_query_ndcg(rankings: Mapping[str, Sequence[str]], qrels_like: Mapping[str, Mapping[str, float]],
                   k: int = 10) -> dict[str, float]:
    """{qid: nDCG@k} with `ndcg_at_k`'s exact semantics, for paired comparisons of two systems."""
    return {q: ndcg_at_k({q: rankings[q]}, qrels_like, k) for q in rankings if q in qrels_like and len(rankings[q])}
