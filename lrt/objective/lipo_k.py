"""Whole-answer log-probs of K permutation strings per list, for the sequence-level `lipo_k` term.

Answer tokens. The batch row holds `prompt + teacher target + EOS` (the collator's LM target). Its
identifier tokens were verified to be single tokens in context (`encode_example`), and a ranking
changes only which identifier stands at each output rank, so ranking k's answer is the teacher
target with the identifier token of output rank r replaced by that of its r-th candidate: the same
length, separators and EOS. `check_substitution` confirms this equals a fresh tokenization.

Compute. One prompt forward serves all K answers: the trainer's own forward over the row returns
its KV cache; the cache is repeated K times along the batch and the K answers (A tokens each) run
after it with the teacher target's positions masked out of the attention and position ids
continuing from the prompt. Extra cost: K·A answer tokens, and K copies of the prompt KV cache
(no prompt recompute). Under gradient checkpointing transformers drops the cache; then each answer
runs with its own copy of the prompt rows (K full forwards: same values, K× the prompt compute).
"""
from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from lrt.losses.lipo_k import perturbed_orders, teacher_order

_MIX = 0x9E3779B1


def list_seeds(batch: dict[str, torch.Tensor], seed: int) -> list[int]:
    """One seed per list from `seed` and its tokens at their positions (not its padding or batch)."""
    ids, attn, pos = batch["input_ids"], batch["attention_mask"], batch["position_ids"]
    w = (pos * _MIX + 12345) % (1 << 20) + 1
    h = ((ids % (1 << 20)) * w * attn).sum(-1) % (1 << 31)
    return [(int(x) * 1000003 + seed) % (1 << 62) for x in h.tolist()]


def answers(batch: dict[str, torch.Tensor], orders: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(tokens [B, K, A], mask [B, A], start [B]): each ranking's answer tokens, right-padded;
    `start` is the padded column of each row's first target token."""
    B, T = batch["input_ids"].shape
    flat = batch["lm_flat_pos"]
    if flat.numel() == 0:
        raise RuntimeError("lipo_k needs the answer tokens in the batch (rows encoded with their target)")
    row = torch.div(flat, T, rounding_mode="floor")
    counts = torch.bincount(row, minlength=B)
    first = torch.cumsum(counts, 0) - counts
    j = torch.arange(flat.numel(), device=flat.device) - first[row]  # index within the row's answer
    A = int(counts.max())
    start = torch.zeros(B, dtype=torch.long, device=flat.device).scatter_reduce(
        0, row, flat % T + 1, reduce="amin", include_self=False)
    tok = torch.zeros(B, A, dtype=torch.long, device=flat.device)
    tok[row, j] = batch["lm_targets"]
    rank = torch.zeros(B, A, dtype=torch.long, device=flat.device)
    rank[row, j] = batch["lm_token_ranks"]
    mask = torch.zeros(B, A, dtype=torch.bool, device=flat.device)
    mask[row, j] = True
    cand = batch["cand_ids"]
    t_order = teacher_order(batch["ranks"])
    r0 = (rank - 1).clamp_min(0)
    teacher_id = torch.gather(cand, 1, torch.gather(t_order, 1, r0).clamp_min(0))
    slot = mask & (rank > 0) & (tok == teacher_id)
    n_valid = (batch["ranks"] > 0).sum(-1)
    if not torch.equal(slot.sum(-1), n_valid):
        raise RuntimeError("lipo_k: an answer does not hold one identifier token per candidate "
                           "(identifiers must be single tokens: prompt.identifiers=special or alpha)")
    K = orders.shape[1]
    idx = torch.gather(orders, 2, r0[:, None, :].expand(B, K, A)).clamp_min(0)  # candidate per slot
    new_id = torch.gather(cand[:, None, :].expand(B, K, cand.shape[1]), 2, idx)
    out = torch.where(slot[:, None, :], new_id, tok[:, None, :].expand(B, K, A))
    return out, mask, start


def _cache_kw(decoder: nn.Module) -> str:
    params = inspect.signature(decoder.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def prefix_forward(decoder: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Any]:
    """The row forward that also keeps its KV cache: (hidden [B, T, H], cache or None)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=getattr(decoder, "config", None))
    out = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                  position_ids=batch["position_ids"], use_cache=True, **{_cache_kw(decoder): cache})
    h = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    return h, (cache if cache.get_seq_length() > 0 else None)


def sequence_logprobs(
    decoder: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None, batch: dict[str, torch.Tensor],
    hidden: torch.Tensor, cache: Any, tokens: torch.Tensor, mask: torch.Tensor, start: torch.Tensor, chunk: int,
) -> torch.Tensor:
    """log p(answer_k | prompt) [B, K] in fp32: Σ over answer tokens, vocabulary projected in chunks
    on the answer rows only (never [B, T, V]). `hidden`/`cache` come from `prefix_forward`."""
    from lrt.losses.lm import chunked_lm_nll
    from lrt.scoring import full_precision

    B, K, A = tokens.shape
    T = batch["input_ids"].shape[1]
    col = torch.arange(T, device=start.device)
    past = (batch["attention_mask"] * (col[None, :] < start[:, None])).repeat_interleave(K, 0)
    first_pos = torch.gather(batch["position_ids"], 1, start[:, None])  # position of the first target token
    ans_ids = tokens[:, :, :-1].reshape(B * K, A - 1)
    ans_mask = mask[:, :-1].repeat_interleave(K, 0).long()
    ans_pos = (first_pos + torch.arange(A - 1, device=start.device)).repeat_interleave(K, 0)
    if A > 1:
        if cache is not None:
            cache.batch_repeat_interleave(K)
            out = decoder(input_ids=ans_ids, attention_mask=torch.cat([past, ans_mask], 1), position_ids=ans_pos,
                          use_cache=True, **{_cache_kw(decoder): cache})
            h_ans = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        else:  # no cache (gradient checkpointing): each answer after its own copy of the prompt rows
            rep = lambda x: x.repeat_interleave(K, 0)  # noqa: E731
            out = decoder(input_ids=torch.cat([rep(batch["input_ids"]), ans_ids], 1),
                          attention_mask=torch.cat([past, ans_mask], 1),
                          position_ids=torch.cat([rep(batch["position_ids"]), ans_pos], 1), use_cache=False)
            h_ans = (out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0])[:, T:]
    else:
        h_ans = hidden.new_zeros(B * K, 0, hidden.shape[-1])
    h_prompt = hidden[torch.arange(B, device=hidden.device), start - 1]  # predicts answer token 0
    h_all = torch.cat([h_prompt.repeat_interleave(K, 0)[:, None], h_ans], 1)  # [B*K, A, H]
    sel = mask.repeat_interleave(K, 0).reshape(-1)
    with full_precision(hidden):
        nll = chunked_lm_nll(h_all.reshape(B * K * A, -1)[sel], weight, tokens.reshape(-1)[sel], chunk, bias)
        seq = torch.arange(B * K, device=nll.device).repeat_interleave(A)[sel]
        lp = torch.zeros(B * K, dtype=torch.float32, device=nll.device).index_add(0, seq, -nll.float())
    return lp.reshape(B, K)


def check_substitution(tokenizer: Any, template: Any, n: int) -> None:
    """Startup probe: the substituted answer of a reversed and a rotated ranking must equal the
    tokenizer's own encoding of that answer, else the answer log-probs would score other text."""
    from lrt.data.collate import encode_example, identifier_token_ids
    from lrt.data.schema import Candidate, ListwiseExample
    from lrt.errors import LrtError

    ids = identifier_token_ids(tokenizer, template, n)
    cands = [Candidate(docid=f"d{i}", text=f"probe passage {i}") for i in range(n)]
    for ranking in (list(range(n)), list(reversed(range(n))), list(range(1, n)) + [0]):
        ex = ListwiseExample(qid="probe", query="probe query", candidates=cands, ranking=[f"d{i}" for i in ranking])
        enc = encode_example(tokenizer, template, ex, max_length=10**6, id_token_ids=ids)
        if ranking == list(range(n)):
            base = enc
            continue
        got = list(base.input_ids)
        for k in range(base.target_start, len(got)):
            r = base.token_ranks[k - base.target_start]
            if r > 0 and got[k] == ids[r - 1]:
                got[k] = ids[ranking[r - 1]]
        if got != enc.input_ids:
            raise LrtError("loss lipo_k: this tokenizer encodes a permuted answer differently from the teacher's "
                           "with identifiers swapped; use prompt.identifiers=special")
