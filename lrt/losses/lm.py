"""LM-side loss pieces for generative rerankers (fullrank / FIRST LM term).

The memory problem: fp32 logits [M, V] plus their softmax and gradient cost ~12·M·V bytes, e.g.
~0.8 GB for one fullrank target (M ≈ 500 tokens) with a 128k vocabulary, and it grows with the
micro-batch and with any extra supervised positions. `chunked_lm_nll`
never holds more than one [chunk_size, V] block (plus transient casts of it), in forward *and*
backward: it saves only the per-token log-sum-exp and recomputes each block's logits in backward.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


def importance_weights(token_ranks: Tensor, alpha: float = 1.0) -> Tensor:
    """fullrank importance-aware token weights [M] (fp32).

    A token of the identifier at *output* position r >= 1 gets 1 + 1/log2(r + 1) (r=1 → 2.0,
    2 → 1.631, 10 → 1.289, 100 → 1.150), so mistakes at the head of the ranking cost more.
    Tokens with token_rank <= 0 (separators " > ", EOS, anything else) get `alpha`; fullrank's
    code uses 1, its paper describes α <= 1. The token → rank map comes from the collator.
    """
    if token_ranks.dtype.is_floating_point:
        raise ValueError(f"token_ranks must be an integer tensor, got {token_ranks.dtype}")
    r = token_ranks.clamp_min(1).to(torch.float32)
    w = 1.0 + 1.0 / torch.log2(r + 1.0)
    return torch.where(token_ranks >= 1, w, torch.tensor(float(alpha), dtype=torch.float32, device=w.device))


def _acc_dtype(*tensors: Tensor | None) -> torch.dtype:
    """fp32 for fp32/bf16/fp16 inputs (log-softmax in fp32), fp64 if any input is fp64."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def _chunk_logits(h: Tensor, weight: Tensor, bias: Tensor | None, acc: torch.dtype) -> Tensor:
    """Logits of one chunk: matmul in the weight's dtype (as `lm_head` would), then upcast."""
    logits = (h.to(weight.dtype) @ weight.T).to(acc)
    if bias is not None:
        logits = logits + bias.to(acc)
    return logits


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Per-token NLL of `hidden @ weight.T (+ bias)`, recomputing logit chunks in backward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_size, ignore_index):  # type: ignore[override]
        # dtypes are chosen explicitly below; an enclosing autocast must not re-cast them
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            return _ChunkedLinearCrossEntropy._forward(ctx, hidden, weight, bias, targets, chunk_size, ignore_index)

    @staticmethod
    def _forward(ctx, hidden, weight, bias, targets, chunk_size, ignore_index):  # type: ignore[no-untyped-def]
        acc = _acc_dtype(hidden, weight, bias)
        m = hidden.shape[0]
        nll = hidden.new_zeros(m, dtype=acc)
        lse = hidden.new_zeros(m, dtype=acc)
        for start in range(0, m, chunk_size):
            end = min(start + chunk_size, m)
            logits = _chunk_logits(hidden[start:end], weight, bias, acc)
            tgt = targets[start:end]
            keep = tgt != ignore_index
            picked = logits.gather(1, torch.where(keep, tgt, 0)[:, None]).squeeze(1)
            # logsumexp in place on the block: a second [chunk, V] fp32 buffer would double the peak
            mx = logits.amax(dim=-1, keepdim=True)
            chunk_lse = logits.sub_(mx).exp_().sum(-1).log_().add_(mx.squeeze(1))
            lse[start:end] = chunk_lse
            nll[start:end] = torch.where(keep, chunk_lse - picked, 0.0)
            del logits
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.chunk_size, ctx.ignore_index, ctx.acc = chunk_size, ignore_index, acc
        return nll

    @staticmethod
    @once_differentiable  # no double backward (nothing in lrt needs Hessian-vector products)
    def backward(ctx, grad_nll):  # type: ignore[override]
        with torch.autocast(device_type=grad_nll.device.type, enabled=False):
            return _ChunkedLinearCrossEntropy._backward(ctx, grad_nll)

    @staticmethod
    def _backward(ctx, grad_nll):  # type: ignore[no-untyped-def]
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        acc, chunk_size = ctx.acc, ctx.chunk_size
        m = hidden.shape[0]
        grad_h = torch.empty_like(hidden) if need_h else None  # every row is written
        # Weight grads accumulate over chunks in fp32 even for bf16 weights: summing many chunk
        # contributions in bf16 loses precision. Costs one fp32 [V, H] buffer (2x the bf16
        # grad of lm_head); skipped entirely when lm_head is frozen (LoRA).
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=acc, device=bias.device) if need_b else None
        for start in range(0, m, chunk_size):
            end = min(start + chunk_size, m)
            h = hidden[start:end]
            tgt = targets[start:end]
            keep = tgt != ctx.ignore_index
            g = torch.where(keep, grad_nll[start:end].to(acc), 0.0)
            # d nll / d logits = softmax − onehot(target), scaled by the incoming grad; in place
            # on the recomputed block so only one [chunk, V] fp32 buffer is alive.
            dlogits = _chunk_logits(h, weight, bias, acc)
            dlogits.sub_(lse[start:end, None]).exp_()
            dlogits.scatter_add_(1, torch.where(keep, tgt, 0)[:, None], dlogits.new_full((end - start, 1), -1.0))
            dlogits.mul_(g[:, None])
            if need_h:
                grad_h[start:end] = (dlogits.to(weight.dtype) @ weight).to(hidden.dtype)
            if need_w:
                grad_w.addmm_(dlogits.T, h.to(acc))
            if need_b:
                grad_b += dlogits.sum(0)
            del dlogits
        grad_w = grad_w.to(weight.dtype) if need_w else None
        grad_b = grad_b.to(bias.dtype) if need_b else None
        return grad_h, grad_w, grad_b, None, None, None


def chunked_lm_nll(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    chunk_size: int = 1024,
    bias: Tensor | None = None,
    ignore_index: int = -100,
) -> Tensor:
    """Per-token cross-entropy [M] of `hidden @ weight.T + bias` against `targets`, memory-bounded.

    Same values and gradients (w.r.t. hidden, weight, bias) as
    `F.cross_entropy(hidden @ weight.T + bias, targets, reduction="none")`, including 0 for
    `ignore_index` targets, but only one [chunk_size, V] logits block exists at a time. The
    matmul runs in the weight's dtype (like the model's lm_head) and log-softmax in fp32 (fp64 for
    fp64 inputs), so bf16 models get fp32 losses. Pass only the supervised positions (M rows).
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"need hidden [M, H] and weight [V, H], got {tuple(hidden.shape)}, {tuple(weight.shape)}")
    if targets.shape != hidden.shape[:1] or targets.dtype.is_floating_point:
        raise ValueError(f"targets must be an integer tensor [M], got {tuple(targets.shape)} {targets.dtype}")
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"bias must be [V]={tuple(weight.shape[:1])}, got {tuple(bias.shape)}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size!r} must be an int >= 1")
    return _ChunkedLinearCrossEntropy.apply(hidden, weight, bias, targets, chunk_size, ignore_index)


def weighted_lm_loss(nll: Tensor, weights: Tensor | None = None, normalize: str = "tokens") -> tuple[Tensor, Tensor]:
    """(numerator Σ w·nll, denominator) of a weighted token loss; the caller divides.

    The trainer sums numerators and denominators over micro-batches and ranks and divides by the
    *global* denominator, which is why both are returned instead of a ratio. `tokens`: the
    denominator is the token count (fullrank: Σ w·nll / |T|, so importance weights raise the
    loss scale by ~1.17x); `weights`: Σ w (a true weighted mean). Without weights both are the
    plain token mean. fp32 (fp64 for fp64 nll).
    """
    if normalize not in ("tokens", "weights"):
        raise ValueError(f"normalize={normalize!r} must be 'tokens' or 'weights'")
    acc = torch.float64 if nll.dtype == torch.float64 else torch.float32
    nll = nll.to(acc)
    count = torch.tensor(float(nll.numel()), dtype=acc, device=nll.device)
    if weights is None:
        return nll.sum(), count
    if weights.shape != nll.shape:
        raise ValueError(f"weights shape {tuple(weights.shape)} != nll shape {tuple(nll.shape)}")
    w = weights.detach().to(acc)
    return (w * nll).sum(), (count if normalize == "tokens" else w.sum())
