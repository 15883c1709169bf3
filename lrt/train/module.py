"""The module DDP / DeepSpeed wrap: batch -> weighted loss, never full-vocabulary logits."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from lrt.scoring import decoder_and_head, hidden_states
from lrt.train.objective import Objective


class RerankModule(nn.Module):
    """Wraps the causal LM so one `forward` computes every loss term of a micro-batch.

    The LM head weight is used directly (identifier rows, chunked target projection), outside the
    head's own forward; under ZeRO-3 it is registered as an external parameter of this module so
    DeepSpeed gathers it for this forward and its backward.
    """

    def __init__(self, model: nn.Module, objective: Objective) -> None:
        super().__init__()
        self.model = model
        self.objective = objective
        _, head = decoder_and_head(model)
        if hasattr(head.weight, "ds_id"):
            import deepspeed

            deepspeed.zero.register_external_parameter(self, head.weight)

    def forward(  # type: ignore[override]
        self, batch: dict[str, torch.Tensor], dens: dict[str, float], scale: float
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        decoder, head = decoder_and_head(self.model)
        h = hidden_states(decoder, batch)
        nums, _ = self.objective.numerators(h, batch, head.weight, getattr(head, "bias", None))
        loss = self.objective.combine(nums, dens, scale)
        return loss, {k: v.detach() for k, v in nums.items()}


@contextlib.contextmanager
def gathered(params: list[nn.Parameter], modifier_rank: int | None = None) -> Iterator[None]:
    """Gather ZeRO-3 partitioned parameters for use outside their module (a no-op otherwise);
    with `modifier_rank`, that rank's edits are broadcast and re-partitioned on exit."""
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        with deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank):
            yield
    else:
        yield


class Zero3EvalView(nn.Module):
    """What evaluation scores with under ZeRO-3: the live (partitioned) decoder plus a gathered,
    frozen copy of the LM head. Scoring reads `head.weight` outside any module forward; ZeRO-3
    releases a gathered weight when the module that owns it (the tied input embedding) finishes
    its forward, so a plain `GatheredParameters` around the reranker is not enough."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        decoder, head = decoder_and_head(model)
        self.decoder = decoder
        bias = getattr(head, "bias", None)
        with gathered([p for p in (head.weight, bias) if p is not None]):
            w = head.weight.detach().clone()
            b = bias.detach().clone() if bias is not None else None
        self.head = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype)
        self.head.weight = nn.Parameter(w, requires_grad=False)
        if b is not None:
            self.head.bias = nn.Parameter(b, requires_grad=False)

    def get_decoder(self) -> nn.Module:
        return self.decoder

    def get_output_embeddings(self) -> nn.Module:
        return self.head
