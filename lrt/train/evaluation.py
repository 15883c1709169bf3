"""In-training evaluation: rerank the eval lists with the live model, score nDCG@10 against the
best judgements available, and the one definition of the metric keys every reader uses.

What nDCG@10 is computed against, and the key it is logged under (METRIC_SUFFIX):
"qrels": every judged document (eval.qrels or the rows' `qrels`): exactly trec_eval's nDCG@10;
"candidates": only the candidates' grades (the ideal DCG ignores judged documents outside the list,
so it reads higher than trec_eval: DL19 BM25 0.5456 vs 0.5058); "teacher": gains from teacher ranks.

The ranker comes from the family (`family.ranker`, lrt.families): the one place in-training eval
picks its ranking engine. The eval window is `eval_window` (the one default of training).
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

from lrt.data.schema import ListwiseExample
from lrt.errors import LrtError
from lrt.ranking.defaults import FIRST_STAGE_K, FIRST_STAGE_WARN, default_window  # noqa: F401 (re-exported)
from lrt.ranking.defaults import first_stage_share as _first_stage_share

log = logging.getLogger("lrt")

METRIC_SUFFIX = {"qrels": "", "candidates": "_candidates", "teacher": "_teacher"}


def metric_keys(kind: str) -> tuple[str, str]:
    """(model key, initial-order key) for judgements of `kind`, e.g. eval/nDCG@10_candidates."""
    sfx = METRIC_SUFFIX[kind]
    return f"eval/nDCG@10{sfx}", f"eval/initial_nDCG@10{sfx}"


def headline_keys(rec: dict[str, Any]) -> tuple[str | None, str | None]:
    """(model key, initial-order key) an evaluation record carries: `eval/nDCG@10` with full qrels,
    else `_candidates`, else `_teacher` (what select_best, the console, the CLI, plots and cards
    report); (None, None) when there is none, the initial key None when it is missing."""
    for kind in METRIC_SUFFIX:
        key, init = metric_keys(kind)
        if key in rec:
            return key, init if init in rec else None
    return None, None


def headline_key(rec: dict[str, Any]) -> str:
    """The nDCG@10 key of an evaluation record (KeyError when there is none)."""
    key, _ = headline_keys(rec)
    if key is None:
        raise KeyError(f"no eval/nDCG@10* key in {sorted(rec)}")
    return key


def eval_window(r: Any, examples: Sequence[ListwiseExample]) -> tuple[int, int]:
    """(window, stride) of in-training eval: the one default the export records too
    (lrt.ranking.default_window: eval.window, else data.window, else 20; stride half of it)."""
    return default_window(r.eval.window, r.eval.stride, r.data.window)


def first_stage_share(rankings: dict[str, list[str]], examples: Sequence[ListwiseExample],
                      k: int = FIRST_STAGE_K) -> float:
    """Share of queries whose reranked top-k is exactly the input (first-stage) order's top-k: near 1,
    the model only reproduces the first stage (issue 23; lrt.ranking.first_stage_share)."""
    return _first_stage_share(rankings, {e.qid: [c.docid for c in e.candidates] for e in examples}, k)


def eval_judgements(examples: list[ListwiseExample], qrels_file: str | None = None
                    ) -> tuple[dict[str, dict[str, float]], str]:
    """(qrels, kind): a TREC qrels file, else every row's full `qrels`, else the candidates' grades
    or teacher-rank gains (see METRIC_SUFFIX)."""
    if qrels_file:
        from lrt.config import resolve_path
        from lrt.io.trec import read_qrels

        judged = read_qrels(resolve_path(qrels_file))
        qids = {e.qid for e in examples}
        missing = len(qids - set(judged))
        if missing == len(qids):
            raise LrtError(f"eval.qrels {qrels_file}: none of the {len(qids)} eval query ids is judged there "
                           f"(eval e.g. {sorted(qids)[:3]}, qrels e.g. {list(judged)[:3]}); pair the right files")
        if missing:
            log.warning("eval.qrels %s: %d of %d eval queries have no judgements and are left out (as trec_eval)",
                        qrels_file, missing, len(qids))
        return {q: {d: float(g) for d, g in judged[q].items()} for q in qids if q in judged}, "qrels"
    with_qrels = sum(e.qrels is not None for e in examples)
    if with_qrels == len(examples):
        return {e.qid: {d: float(g) for d, g in e.qrels.items()} for e in examples}, "qrels"  # type: ignore[union-attr]
    if with_qrels:
        log.warning("only %d of %d eval rows carry full `qrels`: evaluating all of them against the candidates' "
                    "grades (eval/nDCG@10_candidates); give eval.qrels for trec_eval's nDCG@10", with_qrels,
                    len(examples))
    kind = "candidates" if all(e.relevance is not None for e in examples) else "teacher"
    return eval_qrels(examples), kind


def eval_ndcg(rankings: dict[str, list[str]], qrels: dict[str, dict[str, float]], kind: str) -> float:
    """nDCG@10 over rankings ∩ qrels: ir_measures/pytrec_eval (trec_eval itself) on full integer
    qrels; the exact float-grade implementation otherwise (synthetic grades need not be integers)."""
    from lrt.measures import evaluate, ndcg_at_k

    if kind == "qrels":
        return evaluate(qrels, rankings, ["nDCG@10"])["nDCG@10"]
    return ndcg_at_k(rankings, qrels, 10)


def eval_qrels(examples: list[ListwiseExample]) -> dict[str, dict[str, float]]:
    """Graded relevance of the candidates when the data has it; otherwise teacher-rank gains."""
    out: dict[str, dict[str, float]] = {}
    for e in examples:
        if e.relevance is not None:
            out[e.qid] = {c.docid: float(g) for c, g in zip(e.candidates, e.relevance)}
        else:
            n = len(e.ranking)
            out[e.qid] = {d: float(max(0, min(n, 10) + 1 - i)) for i, d in enumerate(e.ranking, 1)}
    return out


class Evaluator:
    """One trainer's in-training evaluation: judgements read once, rankings of the first and the
    latest evaluation kept (the quickstart compares them with the exported model's)."""

    def __init__(self, trainer: Any) -> None:
        self.t = trainer
        self.judged: tuple[dict[str, dict[str, float]], str] | None = None
        if trainer.r.eval.qrels and trainer.eval_examples:  # a qrels file that judges no eval query: before step 1
            self.judged = eval_judgements(trainer.eval_examples, trainer.r.eval.qrels)
        self.last_rankings: dict[str, list[str]] | None = None
        self.first_rankings: dict[str, list[str]] | None = None

    def ranker(self, model: Any) -> Any:
        """The in-process ranker of this run's family (the one place eval picks its ranking engine)."""
        t = self.t
        w, stride = eval_window(t.r, t.eval_examples)
        rr = t.family.ranker(model, t.tok, t.template, t.r, window=w, stride=stride)
        rr.progress_desc = "eval"  # the reranking progress bar's label
        return rr

    def evaluate(self, model: Any) -> dict[str, Any] | None:
        """Rerank every eval list with `model` (eval mode is the ranker's business) and score it."""
        t, r = self.t, self.t.r
        if not t.eval_examples or not t.family.can_evaluate(t.id_ids):
            return None
        rr = self.ranker(model)
        # Every rank takes a slice of the queries and the results are gathered. Under ZeRO-3 each
        # forward is collective (parameters are all-gathered), so ranks must run identical forward
        # sequences: there, every rank reranks every query.
        mine = t.eval_examples if t.zero3 else t.eval_examples[t.env.rank::t.env.world]
        with t.autocast():
            ranked = rr.rerank_many([(e.qid, e.query, e.candidates) for e in mine])
        allr: dict[str, list[str]] = {}
        for part in t.env.gather_objects({q: [d for d, _ in v] for q, v in ranked.items()}):
            allr.update(part)  # type: ignore[arg-type]
        if self.judged is None:  # read once (eval.qrels may be a large file)
            self.judged = eval_judgements(t.eval_examples, r.eval.qrels)
        qrels, kind = self.judged
        initial = {e.qid: [c.docid for c in e.candidates] for e in t.eval_examples}
        key, init_key = metric_keys(kind)
        res = {"step": t.step, key: eval_ndcg(allr, qrels, kind), init_key: eval_ndcg(initial, qrels, kind),
               "eval/queries": sum(q in qrels for q in allr),
               "eval/first_stage_order": first_stage_share(allr, t.eval_examples)}
        self.last_rankings = allr
        if self.first_rankings is None:
            self.first_rankings = allr  # the run's first evaluation (step 0: the model before training)
        return res
