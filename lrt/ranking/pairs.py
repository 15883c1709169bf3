"""`PairRanker`: rerank with a pointwise yes/no model (scoring.mode=pointwise) exactly as trained.

Every (query, candidate) pair is one sequence in the trained template (`lrt.data.pointwise`); its
score is logit(yes) - logit(no) at the last token (fp32, two LM-head rows). Pairs of all queries are
sorted by length and batched `batch_size` at a time; a query's order is its candidates by score
(ties keep the first-stage order), and the returned scores are made strictly decreasing by the
score rule of `lrt.ranking` (running minimum with margin SCORE_STEP), so TREC output never ties.
Same public surface as `ListwiseRanker` (`rerank_many`, `rerank`, `last_stats`).
"""
from __future__ import annotations

import time
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from lrt.data.pointwise import PointwiseTemplate, encode_pair_cut, pad_pairs, yes_no_ids
from lrt.data.prompts import passage_text
from lrt.data.schema import Candidate
from lrt.errors import LrtError
from lrt.ranking.modes import PAIR_MODES
from lrt.ranking.defaults import first_stage_counts
from lrt.ranking.stats import RerankStats, passage_lengths
from lrt.ranking.windows import Query, monotone_scores
from lrt.scoring import eval_mode, pointwise_scores


class PairRanker:
    mode = PAIR_MODES[0]
    window = 1  # no windows: one sequence per (query, passage) pair (stats unit "pair")
    stride = 1

    def __init__(self, model: nn.Module, tokenizer: Any, template: PointwiseTemplate, *, max_length: int = 4096,
                 batch_size: int = 8, padding_side: str = "left", **_ignored: Any) -> None:
        if batch_size < 1:
            raise LrtError(f"batch_size must be >= 1 (got {batch_size})")
        self.model, self.tok, self.template = model, tokenizer, template
        self.max_length, self.batch_size, self.side = max_length, batch_size, padding_side
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise LrtError("the tokenizer has neither a pad nor an eos token: set tokenizer.pad_token")
        self.pad_id = int(pad)
        self.yes_id, self.no_id = yes_no_ids(tokenizer, template)
        self.last_stats = RerankStats(self.mode, scores="logit", unit="pair")
        self.progress_desc = "rerank"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """logit(yes) - logit(no) of each (query, passage text), batched by length."""
        enc = [encode_pair_cut(self.tok, self.template, q, p, self.max_length) for q, p in pairs]
        seqs = [ids for ids, _ in enc]
        self.last_stats.windows_cut += sum(cut for _, cut in enc)  # pairs cut to fit max_length
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
        out = [0.0] * len(seqs)
        with torch.no_grad(), eval_mode(self.model):
            for a in range(0, len(order), self.batch_size):
                idx = order[a:a + self.batch_size]
                batch = {k: v.to(self.device) for k, v in pad_pairs([seqs[i] for i in idx], self.pad_id, self.side).items()}
                s = pointwise_scores(self.model, batch, self.yes_id, self.no_id)
                for i, v in zip(idx, s.tolist()):
                    out[i] = float(v)
                self.last_stats.batches += 1
                self.last_stats.prompt_tokens += int(batch["attention_mask"].sum())
        return out

    def rerank_many(self, queries: Iterable[Query], **_ignored: Any) -> dict[str, list[tuple[str, float]]]:
        qs = list(queries)
        st = self.last_stats = RerankStats(self.mode, scores="logit", unit="pair", queries=len(qs))
        t0 = time.perf_counter()
        pairs = [(q, passage_text(c.text, c.title)) for _, q, cands in qs for c in cands]
        st.count_passages(passage_lengths(self.tok, [p for _, p in pairs]), self.template.max_passage_tokens)
        scores = self.score_pairs(pairs)
        st.windows = len(pairs)  # pairs scored
        out: dict[str, list[tuple[str, float]]] = {}
        k = 0
        for qid, _, cands in qs:
            if qid in out:
                raise LrtError(f"query {qid!r} appears twice; give each query once")
            s = scores[k:k + len(cands)]
            k += len(cands)
            order = sorted(range(len(cands)), key=lambda j: (-s[j], j))
            out[qid] = list(zip([cands[j].docid for j in order], monotone_scores([s[j] for j in order])))
        st.first_stage_same, st.first_stage_queries = first_stage_counts(
            {q: [d for d, _ in r] for q, r in out.items()}, {qid: [c.docid for c in cands] for qid, _, cands in qs},
            st.first_stage_k)
        st.seconds = time.perf_counter() - t0
        return out

    def rerank(self, query: str, passages: Sequence[Candidate | tuple[str, str]], **_: Any) -> list[tuple[str, float]]:
        cands = [p if isinstance(p, Candidate) else Candidate(p[0], p[1]) for p in passages]
        return self.rerank_many([("q", query, cands)])["q"]
