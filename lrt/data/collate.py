"""Encode listwise examples with explicit answer positions, and collate them into padded batches.

Positions come from the character offsets of ONE joint tokenization of `prompt + target + eos`:
the answer position is the token right before the first identifier token of the target (its logits
predict the best candidate). Counting non-pad tokens is never used: it breaks when pad == eos and
the chat template contains eos (the Zephyr bug in the FIRST anchor).
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from lrt.data.prompts import (
    PromptTemplate,
    apply_template,
    encode_prompt,
    escape_passage,
    identifier_labels,
    passage_text,
    render_messages,
    render_target,
    render_window,
    truncate_tokens,
)
from lrt.data.schema import ListwiseExample
from lrt.errors import DataError, LrtError

MIN_PASSAGE_TOKENS = 8


@dataclass
class Encoded:
    """One tokenized training list. Plain lists so it can live in an Arrow dataset."""

    input_ids: list[int]
    answer_index: int  # index of the first identifier token; logits at answer_index-1 score candidates
    target_start: int  # index of the first target token
    token_ranks: list[int]  # per target token: output rank of the identifier it belongs to, 0 otherwise
    cand_token_ids: list[int]  # identifier token id of each candidate (display order); [] if not single-token
    ranks: list[int]  # teacher rank (1 = best) of each candidate, display order
    relevance: list[float] | None
    truncated: bool = False  # passages were cut below prompt.max_passage_tokens to fit data.max_length
    teacher_scores: list[float] | None = None  # the teacher's score of each candidate, display order

    def to_row(self) -> dict[str, Any]:
        return dict(self.__dict__)


class IdentifierError(LrtError):
    """An identifier is not one token in context: first-token scoring would read the wrong logit."""


def _token_index(offsets: Sequence[tuple[int, int]], start: int, end: int) -> list[int]:
    """Indices of the tokens overlapping the char span [start, end) (offsets are sorted, so
    bisect to the first token ending after `start` instead of scanning all T tokens)."""
    ends = [e for _, e in offsets] if not isinstance(offsets, _Offsets) else offsets.ends
    i = bisect.bisect_right(ends, start)
    while i > 0 and ends[i - 1] > start:  # zero-width / overlapping special-token offsets
        i -= 1
    out = []
    while i < len(offsets) and offsets[i][0] < end:
        s, e = offsets[i]
        if e > start and e > s:
            out.append(i)
        i += 1
    return out


class _Offsets(list):
    """Offsets with their end positions precomputed once per tokenization."""

    def __init__(self, offsets: Sequence[tuple[int, int]]) -> None:
        super().__init__(tuple(o) for o in offsets)
        self.ends = [e for _, e in self]


def encode_example(
    tokenizer: Any,
    template: PromptTemplate,
    ex: ListwiseExample,
    *,
    max_length: int,
    id_token_ids: Sequence[int] | None,
    window: int | None = None,
    include_target: bool = True,
) -> Encoded:
    """Render and tokenize one example, locate positions from offsets, shrink passages to fit.

    `id_token_ids` (from `identifier_token_ids`) are the single-token ids of the identifiers; when
    given, every identifier in the target must tokenize to exactly that token. When None (LM-only
    training with multi-token identifiers such as fullrank's `[12]`), no candidate scores exist.
    `include_target=False` keeps only `prompt + "["` (rank-only objectives and reranking need nothing
    after it); the passage budget is the same either way.
    """
    cands = ex.candidates[:window] if window else ex.candidates
    ranks_all = ex.ranks()[: len(cands)]
    order = sorted(range(len(cands)), key=lambda i: ranks_all[i])  # re-rank within the window
    ranks = [0] * len(cands)
    for r, i in enumerate(order, 1):
        ranks[i] = r
    labels = identifier_labels(template.identifiers, len(cands))
    target, spans = render_target([labels[i] for i in order])
    # Passages are fitted to prompt + the FULL target + EOS even when only `prompt + "["` is kept
    # (reranking): training and reranking then cut every passage to the same number of tokens.
    suffix = target + (tokenizer.eos_token or "")
    budget = template.max_passage_tokens
    texts = [passage_text(c.text, c.title) for c in cands]
    while True:
        cut = [escape_passage(truncate_tokens(tokenizer, t, budget), template.escape) for t in texts]
        prompt = render_window(tokenizer, template, ex.query, cut, labels)
        full = prompt + suffix
        enc = encode_prompt(tokenizer, template, full, offsets=True)
        n_tok = len(enc["input_ids"])
        if n_tok <= max_length:
            break
        if budget <= MIN_PASSAGE_TOKENS:
            raise DataError(
                f"query {ex.qid}: {n_tok} tokens exceed data.max_length={max_length} even with passages cut to "
                f"{budget} tokens (the template, query and target are never cut): raise data.max_length or lower data.window"
            )
        over = n_tok - max_length
        budget = max(MIN_PASSAGE_TOKENS, budget - max(1, -(-over // len(cands))))
    ids: list[int] = list(enc["input_ids"])
    offsets = _Offsets(enc["offset_mapping"])
    base = len(prompt)
    first_tok = _token_index(offsets, base, base + 1)
    if not first_tok or offsets[first_tok[0]][0] < base:
        raise IdentifierError(
            f"the prompt and the target merge into one token at their boundary ({full[base - 5:base + 3]!r}); "
            "the answer position would be ambiguous: use a chat template whose generation prompt ends in a newline"
        )
    target_start = first_tok[0]
    token_ranks = []
    for k in range(target_start, len(ids)):
        s, e = offsets[k]
        token_ranks.append(next((r for r, (a, b) in enumerate(spans, 1) if s - base < b and e - base > a), 0))
    answer_index = -1
    cand_ids: list[int] = []
    if id_token_ids is not None:
        if len(id_token_ids) < len(cands):
            raise LrtError(f"{len(cands)} candidates but only {len(id_token_ids)} identifier token ids were probed")
        for rank, (a, b) in enumerate(spans, 1):
            lab_start, lab_end = base + a + 1, base + b - 1  # the label inside the brackets
            toks = _token_index(offsets, lab_start, lab_end)
            expected = id_token_ids[order[rank - 1]]
            if len(toks) != 1 or offsets[toks[0]] != (lab_start, lab_end) or ids[toks[0]] != expected:
                pieces = [full[offsets[t][0]:offsets[t][1]] for t in _token_index(offsets, lab_start - 1, lab_end + 1)]
                raise IdentifierError(
                    f"query {ex.qid}: identifier {full[lab_start:lab_end]!r} is not the single token "
                    f"{expected} in context (tokenized as {pieces}); first-token scoring needs single-token "
                    "identifiers: use prompt.identifiers=special (adds <id_k> tokens) or alpha, or train with lm only"
                )
            if rank == 1:
                answer_index = toks[0]
        cand_ids = [int(id_token_ids[i]) for i in range(len(cands))]
    else:
        answer_index = target_start + 1
    if not include_target:  # keep `prompt + "["`: the logits at its last token score the candidates
        ids, token_ranks = ids[:answer_index], []
        target_start = len(ids)
    rel = ex.relevance[: len(cands)] if ex.relevance is not None else None
    # the same display-order cut as `cands`: scores stay aligned with ranks and identifier ids
    teacher = ex.teacher_scores[: len(cands)] if ex.teacher_scores is not None else None
    return Encoded(ids, answer_index, target_start, token_ranks, cand_ids, ranks, rel,
                   truncated=budget < template.max_passage_tokens, teacher_scores=teacher)


def identifier_token_ids(tokenizer: Any, template: PromptTemplate, n: int) -> list[int]:
    """Probe: render a dummy list of n candidates and read each identifier's token id in context.

    Run once before training (and at rerank time) so a multi-token identifier fails fast with a
    clear message instead of silently scoring the wrong logit.
    """
    ex = ListwiseExample(qid="probe", query="probe query", candidates=[], ranking=[])
    labels = identifier_labels(template.identifiers, n)
    prompt = apply_template(
        tokenizer, template, render_messages(template, ex.query, ["probe passage text"] * n, labels)
    )
    target, spans = render_target(labels)
    full = prompt + target
    enc = encode_prompt(tokenizer, template, full, offsets=True)
    offsets = _Offsets(enc["offset_mapping"])
    out: list[int] = []
    for lab, (a, b) in zip(labels, spans):
        s, e = len(prompt) + a + 1, len(prompt) + b - 1
        toks = _token_index(offsets, s, e)
        if len(toks) != 1 or offsets[toks[0]] != (s, e):
            pieces = [full[offsets[t][0]:offsets[t][1]] for t in _token_index(offsets, s - 1, e + 1)]
            raise IdentifierError(
                f"identifier {lab!r} is not a single token in context '[{lab}]' (tokenized as {pieces}); "
                "first-token scoring needs single-token identifiers: use prompt.identifiers=special "
                "(adds <id_k> tokens) or alpha, or train with the lm loss only"
            )
        out.append(int(enc["input_ids"][toks[0]]))
    if len(set(out)) != len(out):
        raise IdentifierError(f"identifiers map to repeated token ids {out}: the tokenizer cannot tell them apart")
    return out


class ListwiseCollator:
    """Pads encoded lists into one batch; positions are shifted by the left padding explicitly."""

    def __init__(self, pad_token_id: int, padding_side: str = "right") -> None:
        if padding_side not in ("left", "right"):
            raise ValueError("padding_side must be left or right")
        self.pad_id = pad_token_id
        self.side = padding_side

    def __call__(self, items: Sequence[Encoded | dict]) -> dict[str, torch.Tensor]:
        rows = [it if isinstance(it, dict) else it.to_row() for it in items]
        B = len(rows)
        T = max(len(r["input_ids"]) for r in rows)
        N = max(len(r["ranks"]) for r in rows)
        input_ids = torch.full((B, T), self.pad_id, dtype=torch.long)
        attn = torch.zeros((B, T), dtype=torch.long)
        position_ids = torch.zeros((B, T), dtype=torch.long)
        answer_pos = torch.zeros(B, dtype=torch.long)
        cand_ids = torch.zeros((B, N), dtype=torch.long)
        ranks = torch.zeros((B, N), dtype=torch.long)
        relevance = torch.full((B, N), -1.0)
        has_rel = all(r.get("relevance") is not None for r in rows)
        teacher = torch.zeros((B, N))
        has_teacher = all(r.get("teacher_scores") is not None for r in rows)
        lm_pos, lm_tgt, lm_rank = [], [], []
        for b, r in enumerate(rows):
            L = len(r["input_ids"])
            off = T - L if self.side == "left" else 0
            input_ids[b, off:off + L] = torch.tensor(r["input_ids"])
            attn[b, off:off + L] = 1
            position_ids[b, off:off + L] = torch.arange(L)
            answer_pos[b] = off + r["answer_index"] - 1
            n = len(r["ranks"])
            ranks[b, :n] = torch.tensor(r["ranks"])
            if r["cand_token_ids"]:
                cand_ids[b, :n] = torch.tensor(r["cand_token_ids"])
            if has_rel:
                relevance[b, :n] = torch.tensor(r["relevance"], dtype=torch.float)
            if has_teacher:
                teacher[b, :n] = torch.tensor(r["teacher_scores"], dtype=torch.float)
            ts = r["target_start"]
            if L > ts:
                # position p predicts token p+1: target tokens ts..L-1 are predicted from ts-1..L-2
                lm_pos.append(torch.arange(ts - 1, L - 1) + off + b * T)
                lm_tgt.append(torch.tensor(r["input_ids"][ts:L]))
                lm_rank.append(torch.tensor(r["token_ranks"][: L - ts]))
        cat = lambda xs: torch.cat(xs) if xs else torch.zeros(0, dtype=torch.long)  # noqa: E731
        batch = {
            "input_ids": input_ids,
            "attention_mask": attn,
            "position_ids": position_ids,
            "answer_pos": answer_pos,
            "cand_ids": cand_ids,
            "ranks": ranks,
            "lm_flat_pos": cat(lm_pos),
            "lm_targets": cat(lm_tgt),
            "lm_token_ranks": cat(lm_rank),
        }
        if has_rel:
            batch["relevance"] = relevance
        if has_teacher:
            batch["teacher_scores"] = teacher  # [B, N], display order like `ranks`; padding 0
        return batch
