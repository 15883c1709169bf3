"""The in-process backend: windows scored by a forward pass, or decoded by `generate`, of a model
held in this process (an export loaded by `lrt rerank`, or the model being trained)."""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from lrt.data.collate import ListwiseCollator
from lrt.ranking.scorer import GenerateRequest, ScoreRequest
from lrt.ranking.stats import RerankStats
from lrt.scoring import decoder_and_head, eval_mode, hidden_states, identifier_scores, unwrap


def answer_logsumexp(hidden: torch.Tensor, answer_pos: torch.Tensor, weight: torch.Tensor,
                     bias: torch.Tensor | None = None, chunk_rows: int = 8192) -> torch.Tensor:
    """fp32 log-sum-exp [B] of the full vocabulary row at each answer position, `chunk_rows` rows
    of the LM head at a time (a [B, chunk] block, never [B, T, vocab]): turns identifier logits
    into the log-probabilities a serving engine reports."""
    B = hidden.shape[0]
    h = hidden[torch.arange(B, device=hidden.device), answer_pos].float()
    parts = []
    for i in range(0, weight.shape[0], chunk_rows):
        z = h @ weight[i:i + chunk_rows].float().T
        if bias is not None:
            z = z + bias[i:i + chunk_rows].float()
        parts.append(torch.logsumexp(z, dim=-1))
    return torch.logsumexp(torch.stack(parts, dim=-1), dim=-1)


def length_batches(items: Sequence[Any], length: Callable[[Any], int], batch_size: int) -> Iterator[list[int]]:
    """Index chunks of `batch_size`, longest first: similar lengths waste little padding."""
    order = sorted(range(len(items)), key=lambda i: -length(items[i]))
    for i in range(0, len(order), batch_size):
        yield order[i:i + batch_size]


class InProcessScorer:
    """`WindowScorer` over an in-memory causal LM: batches sorted by length, eval mode for the call
    (each module's previous mode restored after, because the trainer evaluates mid-training)."""

    name = "hf"

    def __init__(self, model: nn.Module, tokenizer: Any, collate: ListwiseCollator, pad_id: int, batch_size: int) -> None:
        self.model, self.tok, self.collate, self.pad_id, self.batch_size = model, tokenizer, collate, pad_id, batch_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @contextlib.contextmanager
    def _eval_mode(self) -> Iterator[None]:
        with eval_mode(self.model), torch.no_grad():
            yield

    def score(self, requests: Sequence[ScoreRequest], stats: RerankStats) -> list[torch.Tensor]:
        out: list[torch.Tensor | None] = [None] * len(requests)
        decoder, head = decoder_and_head(self.model)
        with self._eval_mode():
            for chunk in length_batches(requests, lambda r: len(r.encoded.input_ids), self.batch_size):
                batch = {k: v.to(self.device) for k, v in self.collate([requests[i].encoded for i in chunk]).items()}
                h = hidden_states(decoder, batch)
                bias = getattr(head, "bias", None)
                s = identifier_scores(h, batch["answer_pos"], batch["cand_ids"], head.weight, bias)
                s = s - answer_logsumexp(h, batch["answer_pos"], head.weight, bias)[:, None]
                for b, i in enumerate(chunk):
                    out[i] = s[b, : len(requests[i].identifier_ids)].cpu()
                stats.batches += 1
                stats.prompt_tokens += int(batch["attention_mask"].sum())
        return out  # type: ignore[return-value]

    def generate(self, requests: Sequence[GenerateRequest], stats: RerankStats) -> list[str]:
        from transformers import GenerationConfig

        eos = self.tok.eos_token_id
        lm = unwrap(self.model)
        out: list[str] = [""] * len(requests)
        with self._eval_mode():
            for chunk in length_batches(requests, lambda r: len(r.prompt_ids), self.batch_size):
                T = max(len(requests[i].prompt_ids) for i in chunk)
                ids = torch.full((len(chunk), T), self.pad_id, dtype=torch.long)
                attn = torch.zeros((len(chunk), T), dtype=torch.long)
                for b, i in enumerate(chunk):  # left padding: every row's next token is at column T
                    p = requests[i].prompt_ids
                    ids[b, T - len(p):] = torch.tensor(p)
                    attn[b, T - len(p):] = 1
                n_new = max(requests[i].max_new_tokens for i in chunk)
                exact = any(requests[i].exact_length for i in chunk)
                # a fresh config: a model's own generation_config (e.g. Qwen's sampling and
                # repetition_penalty=1.05) would bias a permutation, which repeats "] > [" by design
                cfg = GenerationConfig(
                    max_new_tokens=n_new, min_new_tokens=n_new if exact else None,
                    do_sample=False, num_beams=1, use_cache=True, pad_token_id=self.pad_id,
                    eos_token_id=None if exact else eos,
                )
                gen = lm.generate(input_ids=ids.to(self.device), attention_mask=attn.to(self.device), generation_config=cfg)
                stats.batches += 1
                stats.prompt_tokens += int(attn.sum())
                for b, i in enumerate(chunk):
                    new = gen[b, T:].tolist()
                    if eos is not None and eos in new and not exact:
                        new = new[: new.index(eos)]
                    stats.generated_tokens += len(new)
                    out[i] = self.tok.decode(new, skip_special_tokens=False)
        return out
