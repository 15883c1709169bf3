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
def gathered(params: list[nn.Parameter]) -> Iterator[None]:
    """Gather ZeRO-3 partitioned parameters for use outside their module (a no-op otherwise)."""
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        with deepspeed.zero.GatheredParameters(params):
            yield
    else:
        yield
