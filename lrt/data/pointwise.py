"""Pointwise yes/no rerankers (Qwen3-Reranker, bge-reranker-v2-gemma style): one sequence per
(query, passage) pair, scored by logit(yes) - logit(no) at its last token.

The text is `prefix + body(instruction, query, passage) + suffix`, tokenized in three parts without
special tokens and concatenated, exactly as Qwen3-Reranker's published usage code does. Truncation
cuts the body only: the suffix (whose last token is the score position) is never cut (the
sentence-transformers PR #3787 bug). A group = the candidates of one list: the collator samples the
top-1 plus k others per list (seeded by step and list, so a resume or another world size sees the
same groups) and pads all pairs of a micro-batch into one flat `[P, T]` batch.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, replace
from typing import Any, Sequence

import torch

from lrt.data.prompts import passage_text, truncate_tokens
from lrt.data.schema import ListwiseExample
from lrt.data.untrusted import encode_text, fill
from lrt.errors import LrtError

# Qwen3-Reranker's template, byte for byte as its model card / vLLM example publish it.
QWEN3_PREFIX = ('<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the '
                'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n')
QWEN3_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
QWEN3_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
QWEN3_BODY = "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}"

POINTWISE_PRESETS: dict[str, dict[str, Any]] = {
    "qwen3_reranker": {"prefix": QWEN3_PREFIX, "body": QWEN3_BODY, "suffix": QWEN3_SUFFIX,
                       "instruction": QWEN3_INSTRUCTION, "yes": "yes", "no": "no"},
    # Few-token ChatML pair template for tiny demo models (the quickstart's pointwise comparison).
    "compact_pointwise": {"prefix": "<|im_start|>user\n", "body": "Query: {query}\nDocument: {doc}",
                          "suffix": "<|im_end|>\n<|im_start|>assistant\nRelevant:", "instruction": "",
                          "yes": "yes", "no": "no"},
}


@dataclass(frozen=True)
class PointwiseTemplate:
    """Everything that decides a pair's tokens and its score; saved in `lrt_reranker.json`."""

    prefix: str
    body: str
    suffix: str
    instruction: str
    yes: str = "yes"
    no: str = "no"
    max_passage_tokens: int = 300
    kind: str = "pointwise"
    bos: bool = False  # the tokenizer's BOS token id first (prompt.bos=always; Gemma-style rerankers)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "PointwiseTemplate":
        if name not in POINTWISE_PRESETS:
            raise LrtError(f"prompt.preset={name!r} is not a pointwise preset; choose one of {sorted(POINTWISE_PRESETS)}")
        return cls(**{**POINTWISE_PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PointwiseTemplate":
        return cls(**d)

    def with_(self, **kw: Any) -> "PointwiseTemplate":
        return replace(self, **kw)


def yes_no_ids(tokenizer: Any, t: PointwiseTemplate) -> tuple[int, int]:
    """Token ids of the answer words; each must be ONE token, else the score reads the wrong logit."""
    out = []
    for word in (t.yes, t.no):
        ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise LrtError(f"pointwise answer word {word!r} is {len(ids)} tokens for this tokenizer ({ids}); the score "
                           "needs single-token answers: use a tokenizer where it is one token")
        if getattr(tokenizer, "unk_token_id", None) is not None and ids[0] == tokenizer.unk_token_id:
            raise LrtError(f"pointwise answer word {word!r} is the unknown token for this tokenizer: the score would "
                           "read the <unk> row; use a tokenizer whose vocabulary has it")
        out.append(int(ids[0]))
    if out[0] == out[1]:
        raise LrtError(f"pointwise answers {t.yes!r} and {t.no!r} map to the same token id {out[0]}")
    return out[0], out[1]


def pair_text(t: PointwiseTemplate, query: str, passage: str) -> str:
    return t.prefix + t.body.format(instruction=t.instruction, query=query, doc=passage) + t.suffix


def encode_pair(tokenizer: Any, t: PointwiseTemplate, query: str, passage: str, max_length: int) -> list[int]:
    """prefix ids + body ids (cut to fit) + suffix ids: the last token is always the suffix's last."""
    return encode_pair_cut(tokenizer, t, query, passage, max_length)[0]


def encode_pair_cut(tokenizer: Any, t: PointwiseTemplate, query: str, passage: str,
                    max_length: int) -> tuple[list[int], bool]:
    """`encode_pair` and whether the body was cut to fit `max_length`."""
    enc = lambda s: list(tokenizer(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    pre, suf = enc(t.prefix), enc(t.suffix)
    if t.bos:  # as a token id, the way `tokenizer(text)` adds it (a BOS string would tokenize differently)
        if getattr(tokenizer, "bos_token_id", None) is None:
            raise LrtError("prompt.bos=always, but the tokenizer has no BOS token: set prompt.bos=never (or auto)")
        pre = [int(tokenizer.bos_token_id), *pre]
    doc = truncate_tokens(tokenizer, passage, t.max_passage_tokens)  # no escaping: the published template has none
    # query and passage are encoded as text: a `<|im_end|>` in them is never the control token
    body = encode_text(tokenizer, fill(tokenizer, lambda v: t.body.format(instruction=t.instruction, query=v["q"],
                                                                           doc=v["d"]), {"q": query, "d": doc}))["input_ids"]
    room = max_length - len(pre) - len(suf)
    if room < 1:
        raise LrtError(f"data.max_length={max_length} leaves no room for the pair body after the template's "
                       f"{len(pre) + len(suf)} tokens: raise data.max_length")
    return pre + body[:room] + suf, len(body) > room


def encode_group(tokenizer: Any, t: PointwiseTemplate, ex: ListwiseExample, max_length: int,
                 window: int | None = None, index: int = 0) -> dict[str, Any]:
    """One list -> its pair sequences, teacher ranks (1 = best) and relevance (display order)."""
    cands = ex.candidates[:window] if window else ex.candidates
    ranks_all = ex.ranks()[: len(cands)]
    order = sorted(range(len(cands)), key=lambda i: ranks_all[i])
    ranks = [0] * len(cands)
    for r, i in enumerate(order, 1):
        ranks[i] = r
    enc = [encode_pair_cut(tokenizer, t, ex.query, passage_text(c.text, c.title), max_length) for c in cands]
    pairs = [ids for ids, _ in enc]
    rel = list(ex.relevance[: len(cands)]) if ex.relevance is not None else None
    teacher = list(ex.teacher_scores[: len(cands)]) if ex.teacher_scores is not None else None
    return {"pairs": pairs, "ranks": ranks, "relevance": rel, "teacher_scores": teacher, "index": index,
            "length": sum(len(p) for p in pairs), "truncated": any(cut for _, cut in enc),
            "pairs_cut": sum(cut for _, cut in enc)}  # pairs whose body was cut to fit max_length


class GroupRows(list):
    """Encoded groups (in memory) with the `column` view the run summary reads."""

    def column(self, name: str) -> list[Any]:
        return [r[name] for r in self]


def sample_group(row: dict[str, Any], negatives: int | None, seed: int, step: int) -> list[int]:
    """Candidates trained on: all, or the teacher's top-1 plus `negatives` others drawn uniformly,
    seeded by (seed, step, list index) only: the same draw for any world size and after a resume."""
    n = len(row["ranks"])
    if negatives is None or negatives + 1 >= n:
        return list(range(n))
    ranks = row["ranks"]
    top = min(range(n), key=lambda i: ranks[i])
    rng = random.Random((seed * 1_000_003 + step) * 1_000_003 + int(row["index"]))
    rest = rng.sample([i for i in range(n) if i != top], negatives)
    return sorted([top, *rest])


class PointwiseCollator:
    """Micro-batch of lists -> flat padded pairs `[P, T]` plus the `[B, N]` group layout.

    `pair_index[b, n]` is the flat pair holding candidate n of list b (-1: padding); `ranks` are
    re-numbered 1..n inside the sampled group (0 = padding), `relevance` follows the sample.
    `takes_step`: the step stream passes the optimizer step, which seeds the sampling."""

    takes_step = True

    def __init__(self, pad_token_id: int, padding_side: str = "left", negatives: int | None = None,
                 seed: int = 0) -> None:
        self.pad_id, self.side, self.negatives, self.seed = pad_token_id, padding_side, negatives, seed

    def __call__(self, items: Sequence[dict[str, Any]], step: int = 0) -> dict[str, torch.Tensor]:
        picks = [sample_group(r, self.negatives, self.seed, step) for r in items]
        seqs = [items[b]["pairs"][i] for b, p in enumerate(picks) for i in p]
        batch = pad_pairs(seqs, self.pad_id, self.side)
        B, N = len(items), max(len(p) for p in picks)
        pair_index = torch.full((B, N), -1, dtype=torch.long)
        ranks = torch.zeros((B, N), dtype=torch.long)
        relevance = torch.full((B, N), -1.0)
        has_rel = all(r.get("relevance") is not None for r in items)
        teacher = torch.zeros((B, N))
        has_teacher = all(r.get("teacher_scores") is not None for r in items)
        k = 0
        for b, (r, p) in enumerate(zip(items, picks)):
            sub = [r["ranks"][i] for i in p]
            for new, i in enumerate(sorted(range(len(p)), key=lambda j: sub[j]), 1):
                ranks[b, i] = new
            pair_index[b, : len(p)] = torch.arange(k, k + len(p))
            if has_rel:
                relevance[b, : len(p)] = torch.tensor([float(r["relevance"][i]) for i in p])
            if has_teacher:  # follows the sampled candidates, like relevance
                teacher[b, : len(p)] = torch.tensor([float(r["teacher_scores"][i]) for i in p])
            k += len(p)
        batch.update(pair_index=pair_index, ranks=ranks)
        if has_rel:
            batch["relevance"] = relevance
        if has_teacher:
            batch["teacher_scores"] = teacher
        return batch


def pad_pairs(seqs: Sequence[Sequence[int]], pad_id: int, side: str = "left") -> dict[str, torch.Tensor]:
    """Pad pair sequences; explicit position ids and the index of each one's last token."""
    P, T = len(seqs), max(len(s) for s in seqs)
    input_ids = torch.full((P, T), pad_id, dtype=torch.long)
    attn = torch.zeros((P, T), dtype=torch.long)
    pos = torch.zeros((P, T), dtype=torch.long)
    last = torch.zeros(P, dtype=torch.long)
    for i, s in enumerate(seqs):
        off = T - len(s) if side == "left" else 0
        input_ids[i, off:off + len(s)] = torch.tensor(list(s))
        attn[i, off:off + len(s)] = 1
        pos[i, off:off + len(s)] = torch.arange(len(s))
        last[i] = off + len(s) - 1
    return {"input_ids": input_ids, "attention_mask": attn, "position_ids": pos, "last_pos": last}
