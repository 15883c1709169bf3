"""Scores and target log-likelihoods from hidden states: never a `[batch, seq, vocab]` tensor.

Ranking scores are `h[answer] @ W_lm[identifier_ids].T` (the identifier rows of the LM head only);
the LM loss touches target positions only, chunked over the vocabulary projection. This is what
lets a 7B reranker train at 4k tokens with a 150k vocabulary without the logits OOM.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """The underlying `*ForCausalLM` (through DDP/DeepSpeed `.module` and PEFT wrappers)."""
    while hasattr(model, "module") and isinstance(getattr(model, "module"), nn.Module):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def full_precision(t: torch.Tensor) -> contextlib.AbstractContextManager[None]:
    """Autocast off on `t`'s device: scores, log-probs and losses are computed in fp32 on
    fp32-upcast inputs, whatever autocast the caller runs under (bf16 autocast would round a
    logit of ~16 to a 0.06 grid and create exact ties between candidates)."""
    return torch.autocast(device_type=t.device.type, enabled=False)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Every submodule in eval mode for the block (no dropout, no NEFTune noise, no gradient
    checkpointing), then each one back in the mode it had before, so evaluating mid-training
    leaves the training modules training and frozen ones as they were."""
    before = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, was in before:
            m.training = was


def decoder_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(decoder that returns final-normed hidden states, LM head)."""
    base = unwrap(model)
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else getattr(base, "model")
    head = base.get_output_embeddings()
    if decoder is None or head is None:
        raise TypeError(f"{type(base).__name__} exposes no decoder/LM head: lrt needs a causal LM")
    return decoder, head


def hidden_states(decoder: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Final-normed hidden states [B, T, H]; explicit position ids make left == right padding."""
    out = decoder(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        use_cache=False,
    )
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def identifier_scores(
    hidden: torch.Tensor, answer_pos: torch.Tensor, cand_ids: torch.Tensor, weight: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """fp32 scores [B, N] = h[b, answer_pos[b]] . W[cand_ids[b, n]] (+ bias): k rows, not V."""
    B = hidden.shape[0]
    with full_precision(hidden):
        h = hidden[torch.arange(B, device=hidden.device), answer_pos].float()  # [B, H]
        rows = weight[cand_ids].float()  # [B, N, H]
        scores = torch.einsum("bh,bnh->bn", h, rows)
        if bias is not None:
            scores = scores + bias[cand_ids].float()
    return scores


def gather_target_hidden(hidden: torch.Tensor, flat_pos: torch.Tensor) -> torch.Tensor:
    """Hidden states [M, H] at the positions whose next token is a target token."""
    return hidden.reshape(-1, hidden.shape[-1]).index_select(0, flat_pos)


def target_nll(
    hidden: torch.Tensor, batch: dict[str, Any], weight: torch.Tensor, bias: torch.Tensor | None, chunk_size: int
) -> torch.Tensor:
    """Per-target-token NLL [M] in fp32, via the chunked vocabulary projection."""
    from lrt.losses.lm import chunked_lm_nll

    h = gather_target_hidden(hidden, batch["lm_flat_pos"])
    return chunked_lm_nll(h, weight, batch["lm_targets"], chunk_size=chunk_size, bias=bias)


def yes_no_scores(hidden: torch.Tensor, last_pos: torch.Tensor, weight: torch.Tensor, yes_id: int, no_id: int,
                  bias: torch.Tensor | None = None) -> torch.Tensor:
    """Pointwise scores [P] = logit(yes) - logit(no) at each pair's last token, fp32, from the two
    LM-head rows only: h . (W[yes] - W[no]) (+ b[yes] - b[no])."""
    P = hidden.shape[0]
    with full_precision(hidden):
        h = hidden[torch.arange(P, device=hidden.device), last_pos].float()  # [P, H]
        logits = h @ weight[[yes_id, no_id]].float().T  # [P, 2]
        if bias is not None:
            logits = logits + bias[[yes_id, no_id]].float()
    return logits[:, 0] - logits[:, 1]


def pointwise_scores(model: nn.Module, batch: dict[str, torch.Tensor], yes_id: int, no_id: int,
                     pair_batch: int | None = None) -> torch.Tensor:
    """Scores [P] of the flat pairs of `batch` (lrt.data.pointwise.pad_pairs), `pair_batch` pairs
    per forward. Each chunk is trimmed to its own non-pad columns; with gradients on and more than
    one chunk, each chunk's forward runs under activation checkpointing, so a group of N pairs
    holds one chunk's activations at a time (memory ~ pair_batch x seq, not N x seq)."""
    decoder, head = decoder_and_head(model)
    bias = getattr(head, "bias", None)
    P = batch["input_ids"].shape[0]
    step = pair_batch or P

    def chunk(ids: torch.Tensor, attn: torch.Tensor, pos: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        h = hidden_states(decoder, {"input_ids": ids, "attention_mask": attn, "position_ids": pos})
        return yes_no_scores(h, last, head.weight, yes_id, no_id, bias)

    out = []
    for a in range(0, P, step):
        attn = batch["attention_mask"][a:a + step]
        cols = attn.any(0).nonzero()
        lo, hi = int(cols.min()), int(cols.max()) + 1
        args = (batch["input_ids"][a:a + step, lo:hi], attn[:, lo:hi], batch["position_ids"][a:a + step, lo:hi],
                batch["last_pos"][a:a + step] - lo)
        if torch.is_grad_enabled() and P > step:
            from torch.utils.checkpoint import checkpoint

            out.append(checkpoint(chunk, *args, use_reentrant=False))
        else:
            out.append(chunk(*args))
    return torch.cat(out)


def group_scores(flat: torch.Tensor, pair_index: torch.Tensor) -> torch.Tensor:
    """[P] pair scores -> [B, N] group scores (padding slots 0; the losses mask them by rank 0)."""
    s = flat[pair_index.clamp_min(0)]
    return torch.where(pair_index >= 0, s, torch.zeros_like(s))
