"""The training module of the pointwise family: groups of (query, passage) sequences -> [B, N] yes/no
scores -> the recipe's ranking terms (what DDP / DeepSpeed wrap)."""
from __future__ import annotations

import torch
from torch import nn

from lrt.objective.objective import Objective
from lrt.scoring import decoder_and_head, full_precision, group_scores, pointwise_scores


class PointwiseModule(nn.Module):
    """Groups of (query, passage) sequences -> [B, N] scores = logit(yes) - logit(no) -> loss terms."""

    def __init__(self, model: nn.Module, objective: Objective, yes_id: int, no_id: int, pair_batch: int | None) -> None:
        super().__init__()
        self.model, self.objective = model, objective
        self.yes_id, self.no_id, self.pair_batch = yes_id, no_id, pair_batch
        _, head = decoder_and_head(model)
        if hasattr(head.weight, "ds_id"):  # ZeRO-3: the yes/no rows are read outside the head's forward
            import deepspeed

            deepspeed.zero.register_external_parameter(self, head.weight)

    def forward(  # type: ignore[override]
        self, batch: dict[str, torch.Tensor], dens: dict[str, float], scale: float
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        flat = pointwise_scores(self.model, batch, self.yes_id, self.no_id, self.pair_batch)
        with full_precision(flat):
            scores = group_scores(flat, batch["pair_index"])
            nums = self.objective.score_numerators(scores, batch)
            loss = self.objective.combine(nums, dens, scale)
        return loss, {k: v.detach() for k, v in nums.items()}
