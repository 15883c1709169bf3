"""Training glue for `scoring.mode: pointwise`: data (every list encoded as its pair sequences) and
the module DDP wraps (groups of pairs -> [B, N] yes/no scores -> the recipe's ranking terms).

The pair rows are encoded in memory (the tokenised cache stores listwise rows only).
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch import nn

from lrt.config import Recipe, resolve_path
from lrt.data.pointwise import GroupRows, PointwiseTemplate, encode_group, yes_no_ids
from lrt.scoring import decoder_and_head, full_precision, group_scores, pointwise_scores
from lrt.train.objective import Objective


def pointwise_template(r: Recipe) -> PointwiseTemplate:
    """The preset's pair template with the recipe's own parts: `prompt.prefix` / `prompt.suffix`
    replace the text before / after the pair body, `scoring.instruction` fills {instruction},
    `prompt.bos=always` puts the tokenizer's BOS first (auto and never: none, as the presets'
    published usage code). `prompt.system` and `prompt.passage` are refused by the recipe check."""
    return PointwiseTemplate.preset(r.prompt.preset, instruction=r.scoring.instruction, prefix=r.prompt.prefix,
                                    suffix=r.prompt.suffix, max_passage_tokens=r.prompt.max_passage_tokens,
                                    bos=r.prompt.bos == "always")


def prepare_pointwise_data(r: Recipe, env: Any, objective: Objective) -> Any:
    """Load the splits, the tokenizer and the answer ids; encode every training list's pairs."""
    from lrt.data.schema import load_examples
    from lrt.modeling import load_tokenizer
    from lrt.progress import track
    from lrt.train.data import TrainData

    t0 = time.perf_counter()
    template = pointwise_template(r)

    def load(src: str) -> list:
        return load_examples(resolve_path(src), on_invalid=r.data.on_invalid, split=r.data.split, limit=r.data.limit)[0]

    train = load(r.data.train)
    eval_src = r.eval.data or r.data.eval
    evals = load(eval_src) if eval_src else []
    from lrt.train.data import check_teacher_scores

    check_teacher_scores(r, objective, train)
    if r.eval.max_queries:
        evals = evals[: r.eval.max_queries]
    tok = load_tokenizer(r, n_identifiers=0)
    yes_no_ids(tok, template)  # fail fast on a multi-token answer word
    t1 = time.perf_counter()
    show = r.log.progress and env.is_main
    rows = GroupRows(encode_group(tok, template, ex, r.data.max_length, r.data.window, i)
            for i, ex in enumerate(track(train, "encode", unit="list", enabled=show, leave=False)))
    lengths = np.asarray([x["length"] for x in rows], dtype=np.int64)
    return TrainData(train, evals, tok, template, None, rows, lengths,  # type: ignore[arg-type]
                     seconds={"load": t1 - t0, "encode": time.perf_counter() - t1})


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
