"""`ListwiseRanker`: rerank with exactly the prompt and scoring that were trained.

Three modes, one prompt renderer (`lrt.data.collate.encode_example`), so the ranker can never
see a different prompt from the one the model was trained on:

- `first_token` (FIRST): one forward pass per window; candidate scores are the identifier logits at
  the answer position (the `[` the target starts with), from the identifier rows of the LM head only
  (never a `[B, T, vocab]` tensor). Windows slide back to front (RankGPT) and the windows of
  different queries at the same step are batched, sorted by length to waste little padding.
- `full`: the same scoring over ONE window holding all N candidates (fullrank's single pass). It
  needs N single-token identifiers, i.e. the `special` scheme `<id_1>..<id_N>` for N > 26.
- `generate` (RankZephyr / fullrank baseline): greedy decoding of the whole permutation with a KV
  cache, batched with left padding, parsed with RankGPT's repair rules (`parse_permutation`). The
  share of outputs that needed no repair is reported in `last_stats`: it is the baseline's format
  accuracy, which the scoring modes do not need (they always yield a permutation).

Backends (`lrt.ranking.scorer.WindowScorer`): the in-process model (`InProcessScorer`, above) and
any OpenAI-compatible completions endpoint (`lrt.rerank.openai.OpenAIBackend`, e.g. vLLM or SGLang,
via `lrt.rerank.Reranker.from_openai`). The ranker renders every window itself, so the same model
gives the same orderings through either.

Scores (the score rule). Every scoring mode returns the model's own scores, not ranks:
- a window's score of a candidate is log p(identifier | prompt + "[") at the answer position: the
  identifier logit minus the log-sum-exp over the whole vocabulary row (the same number vLLM
  returns as a top logprob; computed chunk-wise, never a [B, T, vocab] tensor);
- windows slide back to front, so a candidate is re-scored by every window that holds it; its raw
  score is the one from the LAST window that placed it (the window that decided its final place);
- the final order is the sliding-window order. Raw scores of different windows need not be
  monotone along it, so the returned score is made strictly decreasing by a running minimum with a
  margin: score[0] = raw[0], score[i] = min(raw[i], score[i-1] - SCORE_STEP) (SCORE_STEP = 1e-3).
  The order is never changed, scores are tie-free, and within the top window (where most of the
  evaluation weight is) they are the model's log-probabilities unchanged unless two differ by
  less than the step.
- `generate` mode has no per-candidate scores: it returns rank-derived n, n-1, ..., 1 (and so do
  lists of one candidate, which need no model call).
"""
from __future__ import annotations

import os
import time
from typing import Any, Iterable, Literal, Sequence

import torch
from torch import nn

from lrt.data.collate import Encoded, ListwiseCollator, encode_example, identifier_token_ids
from lrt.data.parse import parse_permutation
from lrt.data.prompts import ALPHA_MAX, PromptTemplate, identifier_labels, passage_text, special_tokens
from lrt.data.schema import Candidate, ListwiseExample
from lrt.errors import DataError, LrtError
from lrt.progress import Progress
from lrt.ranking.inprocess import InProcessScorer
from lrt.ranking.modes import check_mode, pair_mode
from lrt.ranking.scorer import GenerateRequest, ScoreRequest, WindowScorer
from lrt.ranking.defaults import first_stage_counts
from lrt.ranking.stats import RerankStats, passage_lengths
from lrt.ranking.windows import Query, Window, final_scores, sliding_windows, unpack_window

Mode = Literal["first_token", "full", "generate", "pointwise"]


class ListwiseRanker:
    """Listwise reranking with a causal LM trained by lrt (or any model and a `PromptTemplate`).

    `mode` is the default for `rerank`/`rerank_many`; scoring modes probe the identifier tokens at
    construction so a multi-token identifier fails here, not after an hour of reranking.
    Generation knobs: `gen_margin` extra new tokens beyond the window's target length, and
    `gen_force_length` (decode exactly the target length, ignoring EOS: what the benchmark times).
    `backend` (a `WindowScorer`, e.g. `lrt.rerank.openai.OpenAIBackend`) scores the windows
    instead of `model` (then None).
    """

    def __init__(
        self, model: nn.Module, tokenizer: Any, template: PromptTemplate, *, window: int = 20, stride: int = 10,
        max_length: int = 4096, batch_size: int = 8, padding_side: str = "left", mode: Mode = "first_token",
        gen_margin: int = 16, gen_force_length: bool = False, backend: WindowScorer | None = None,
    ) -> None:
        if window < 2 or stride <= 0 or stride > window:
            raise LrtError(f"need window >= 2 and stride in 1..window (got window={window}, stride={stride})")
        if batch_size < 1:
            raise LrtError(f"batch_size must be >= 1 (got {batch_size})")
        check_mode(mode)
        if pair_mode(mode):
            raise LrtError(f"mode {mode} reranks with lrt.rerank.PointwiseReranker (Reranker.from_pretrained "
                           "of a pointwise export returns one)")
        self.model, self.tok, self.template = model, tokenizer, template
        self.window, self.stride, self.max_length, self.batch_size = window, stride, max_length, batch_size
        self.mode: Mode = mode
        self.gen_margin, self.gen_force_length = gen_margin, gen_force_length
        self.backend = backend
        if model is None and backend is None:
            raise LrtError("Reranker needs a model (in-process) or a backend (Reranker.from_openai)")
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise LrtError("the tokenizer has neither a pad nor an eos token: set tokenizer.pad_token")
        self.pad_id = int(pad)
        self.collate = ListwiseCollator(self.pad_id, padding_side)
        self.id_ids: list[int] | None = None
        self.progress_desc = "rerank"  # the progress bar's label (in-training eval: "eval")
        self.last_stats = RerankStats(mode, backend=self.backend_name)
        self._stats = self.last_stats  # the call in progress
        if mode == "first_token":
            self.identifier_ids(window)

    @property
    def backend_name(self) -> str:
        return "hf" if self.backend is None else self.backend.name

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _scorer(self) -> WindowScorer:
        """The backend, or the in-process model with the current settings."""
        if self.backend is not None:
            return self.backend
        return InProcessScorer(self.model, self.tok, self.collate, self.pad_id, self.batch_size)

    # ---- identifiers ------------------------------------------------------------------------
    def identifier_ids(self, n: int) -> list[int]:
        """Single-token ids of the first n identifiers, probed in context (cached for the max n)."""
        if self.id_ids is None or len(self.id_ids) < n:
            scheme = self.template.identifiers
            if scheme == "alpha" and n > ALPHA_MAX:
                raise LrtError(
                    f"{n} candidates in one window but this model uses alpha identifiers (A..Z, at most {ALPHA_MAX}): "
                    f"use mode first_token with window <= {ALPHA_MAX}, or train with prompt.identifiers=special and "
                    f"data.window >= {n}"
                )
            if scheme == "special":
                vocab = self.tok.get_vocab()
                have = next((k for k, t in enumerate(special_tokens(n)) if t not in vocab), n)
                if have < n:
                    raise LrtError(
                        f"{n} candidates in one window need the identifier tokens <id_1>..<id_{n}>, but the tokenizer "
                        f"has only <id_1>..<id_{have}> (the model was trained with data.window={have}): rerank at most "
                        f"{have} candidates per window (--top-k / --window), or train with data.window >= {n}"
                    )
            self.id_ids = identifier_token_ids(self.tok, self.template, n)
        return self.id_ids[:n]

    # ---- one step: order a batch of windows -------------------------------------------------
    def encode_window(self, item: Window, *, for_generate: bool = False) -> Encoded:
        """The training encoder on one window; a window that cannot fit `max_length` names the
        query and the reranking fix (--max-length), not a recipe key."""
        qid, q, cands = unpack_window(item)
        ex = ListwiseExample(qid, q, list(cands), [c.docid for c in cands])
        ids = None if for_generate else self.identifier_ids(len(cands))
        try:
            return encode_example(self.tok, self.template, ex, max_length=self.max_length, id_token_ids=ids,
                                  include_target=for_generate)
        except DataError as e:
            if "max_length" not in str(e):
                raise
            what = "prompt + the full answer" if for_generate else 'prompt + "["'
            raise DataError(
                f"query {qid}: a window of {len(cands)} passages ({what}) does not fit in max_length="
                f"{self.max_length} tokens even with every passage cut to the minimum: raise --max-length "
                "(Reranker(max_length=...)) or lower --window"
            ) from None

    def score_windows(self, items: Sequence[Window]) -> list[torch.Tensor]:
        """First-token scores (fp32, CPU) of each (qid, query, window candidates) item, batched:
        log p(identifier | prompt + "[") over the full vocabulary row (see the score rule)."""
        if not items:
            return []
        unpacked = [unpack_window(it) for it in items]
        self.identifier_ids(max(len(c) for _, _, c in unpacked))
        reqs = [ScoreRequest(qid, self.encode_window(it), self.identifier_ids(len(c)))
                for it, (qid, _, c) in zip(items, unpacked)]
        self._stats.windows_cut += sum(r.encoded.truncated for r in reqs)
        return self._scorer().score(reqs, self._stats)

    def generate_windows(self, items: Sequence[Window]) -> list[list[int]]:
        """Greedy-decode each window's permutation and parse it; returns 0-based window orders.

        The prompt is the training prompt (`encode_example` with the target, cut at the target),
        so `max_new_tokens` is the length of a correct answer (incl. EOS) plus `gen_margin`.
        """
        if not items:
            return []
        reqs = []
        for it in items:
            e = self.encode_window(it, for_generate=True)
            target = len(e.input_ids) - e.target_start
            self._stats.windows_cut += e.truncated
            reqs.append(GenerateRequest(unpack_window(it)[0], e.input_ids[: e.target_start],
                                        target if self.gen_force_length else target + self.gen_margin,
                                        exact_length=self.gen_force_length))
        texts = self._scorer().generate(reqs, self._stats)
        return [self.parse(t, len(unpack_window(it)[2])) for t, it in zip(texts, items)]

    def parse(self, text: str, n: int) -> list[int]:
        """RankGPT repair rules on a decoded answer for n candidates; counts what had to be
        repaired (never silently) in the current call's stats."""
        p = parse_permutation(text, identifier_labels(self.template.identifiers, n))
        st = self._stats
        st.valid += p.valid
        st.duplicates += p.duplicates
        st.out_of_range += p.out_of_range
        st.missing += p.missing
        if not p.valid and len(st.repaired_examples) < 5:
            st.repaired_examples.append(text[:200])
        return p.order

    def _order_windows(self, items: Sequence[Window], mode: str) -> list[tuple[list[int], list[float] | None]]:
        """Each window's order (0-based, best first) and, in scoring modes, its scores (ties keep
        the current order, which is how identifiers missing from a server's top-k stay put)."""
        if mode == "generate":
            return [(p, None) for p in self.generate_windows(items)]
        out = []
        for s in self.score_windows(items):
            vals = [float(x) for x in s]
            out.append((sorted(range(len(vals)), key=lambda j: (-vals[j], j)), vals))
        return out

    # ---- public API ---------------------------------------------------------------------------
    def rerank_many(
        self, queries: Iterable[Query], *, mode: Mode | None = None, window: int | None = None,
        stride: int | None = None,
    ) -> dict[str, list[tuple[str, float]]]:
        """Rerank many queries; windows at the same step of different queries share batches.

        `full` uses one window of all candidates; the other modes slide `window`/`stride` back to
        front. Returns {qid: [(docid, score)]} best-first with strictly decreasing scores by the
        score rule of the module docstring (generate: n, n-1, ..., 1); what was done (calls,
        tokens, generate's valid share, missing identifiers) is in `self.last_stats`.
        """
        mode = mode or self.mode
        check_mode(mode)
        w, s = window or self.window, stride or self.stride
        if w < 2 or not 0 < s <= w:
            raise LrtError(f"need window >= 2 and stride in 1..window (got window={w}, stride={s})")
        qs = list(queries)
        self._stats = RerankStats(mode, backend=self.backend_name, scores="rank" if mode == "generate" else "logprob",
                                  queries=len(qs))
        t0 = time.perf_counter()
        orders: dict[str, list[Candidate]] = {}
        texts: dict[str, str] = {}
        for qid, q, cands in qs:
            if qid in orders:
                raise LrtError(f"query {qid!r} appears twice; give each query once")
            docids = [c.docid for c in cands]
            if len(set(docids)) != len(docids):
                dup = next(d for i, d in enumerate(docids) if d in docids[:i])
                raise LrtError(f"query {qid!r}: candidate {dup!r} appears twice; a ranking must list each document once")
            orders[qid], texts[qid] = list(cands), q
        plans = {qid: ([(0, len(c))] if mode == "full" else sliding_windows(len(c), w, s)) if len(c) > 1 else []
                 for qid, c in orders.items()}
        if mode == "full" and plans:
            self.identifier_ids(max(len(c) for c in orders.values()))  # fail before any forward pass
        reranked = [passage_text(c.text, c.title) for qid, cands in orders.items() if plans[qid] for c in cands]
        self._stats.count_passages(passage_lengths(self.tok, reranked), self.template.max_passage_tokens)
        initial = {qid: [c.docid for c in cands] for qid, cands in orders.items()}
        raw: dict[str, dict[str, float]] = {qid: {} for qid in orders}  # docid -> score of the last window
        bar = Progress(sum(len(p) for p in plans.values()), self.progress_desc, unit="window",
                       enabled=os.environ.get("RANK", "0") == "0", leave=False)
        for step in range(max((len(p) for p in plans.values()), default=0)):
            active = [qid for qid in orders if step < len(plans[qid])]
            items = [(qid, texts[qid], orders[qid][slice(*plans[qid][step])]) for qid in active]
            for qid, (_, _, win), (perm, vals) in zip(active, items, self._order_windows(items, mode)):
                a, b = plans[qid][step]
                orders[qid][a:b] = [win[j] for j in perm]
                if vals is not None:
                    raw[qid].update((c.docid, v) for c, v in zip(win, vals))
            self._stats.windows += len(active)
            bar.update(len(active))
        bar.close()
        st = self._stats
        st.first_stage_same, st.first_stage_queries = first_stage_counts(
            {qid: [c.docid for c in o] for qid, o in orders.items()}, initial, st.first_stage_k)
        st.seconds = time.perf_counter() - t0
        self.last_stats = st
        return {qid: final_scores([c.docid for c in o], raw[qid]) for qid, o in orders.items()}

    def rerank(
        self, query: str, passages: Sequence[Candidate | tuple[str, str]], *, mode: Mode | None = None,
        window: int | None = None, stride: int | None = None,
    ) -> list[tuple[str, float]]:
        """Docids best-first with strictly decreasing scores for one query."""
        cands = [p if isinstance(p, Candidate) else Candidate(p[0], p[1]) for p in passages]
        return self.rerank_many([("q", query, cands)], mode=mode, window=window, stride=stride)["q"]
