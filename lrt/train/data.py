"""Training data: load + validate, encode once (optionally with `datasets` workers), and a
deterministic step sampler whose only state is the step number (exact resume, any world size)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from lrt.config import Recipe, resolve_path
from lrt.data.collate import encode_example
from lrt.data.prompts import PromptTemplate, max_candidates
from lrt.data.schema import ListwiseExample, load_examples

log = logging.getLogger("lrt")


def prompt_template(r: Recipe) -> PromptTemplate:
    p = r.prompt
    return PromptTemplate.preset(
        p.preset, system=p.system, prefix=p.prefix, suffix=p.suffix, passage=p.passage,
        identifiers=p.identifiers, max_passage_tokens=p.max_passage_tokens, chat_template=p.chat_template,
        system_in_user=p.system_in_user,
    )


def load_split(r: Recipe, source: str) -> list[ListwiseExample]:
    """Validated examples; `data.window` cuts long lists so the alpha limit applies to the window."""
    limit = None if r.data.window else max_candidates(r.identifier_scheme())  # type: ignore[arg-type]
    exs, report = load_examples(
        resolve_path(source), on_invalid=r.data.on_invalid, max_candidates=limit, split=r.data.split, limit=r.data.limit
    )
    if report.skipped:
        log.warning("data %s: %s", source, report.summary())
    return exs


def encode_all(
    r: Recipe, tokenizer: Any, template: PromptTemplate, examples: Sequence[ListwiseExample],
    id_token_ids: list[int] | None, include_target: bool,
) -> list[dict[str, Any]]:
    """Encode every example once; with data.num_proc > 1 through `datasets.map` worker processes."""
    kw = dict(max_length=r.data.max_length, id_token_ids=id_token_ids, window=r.data.window, include_target=include_target)
    if r.data.num_proc <= 1:
        return [encode_example(tokenizer, template, ex, **kw).to_row() for ex in examples]  # type: ignore[arg-type]
    import datasets

    def fn(row: dict[str, Any]) -> dict[str, Any]:
        from lrt.data.schema import example_from_row

        return encode_example(tokenizer, template, example_from_row(dict(row)), **kw).to_row()  # type: ignore[arg-type]

    rows = [ex.to_row() for ex in examples]
    for row in rows:
        row.setdefault("relevance", None)
    ds = datasets.Dataset.from_list(rows)
    enc = ds.map(fn, num_proc=r.data.num_proc, remove_columns=ds.column_names, desc="encode")
    return [dict(x) for x in enc]


@dataclass
class StepSampler:
    """Global batch of optimizer step s = a slice of a seeded per-epoch permutation.

    Rank `rank` takes micro-batch m of that slice at offset (m * world + rank) * per_device, so a
    run with W processes and A accumulation steps sees the same global batches as 1 process with
    W*A accumulation steps, and resuming needs nothing but the step number.
    """

    n_examples: int
    per_device: int
    grad_accum: int
    world: int
    seed: int

    @property
    def global_batch(self) -> int:
        return self.per_device * self.grad_accum * self.world

    @property
    def steps_per_epoch(self) -> int:
        return self.n_examples // self.global_batch

    def step_indices(self, step: int) -> list[int]:
        spe = self.steps_per_epoch
        if spe == 0:
            raise ValueError(
                f"{self.n_examples} training lists < one global batch of {self.global_batch} "
                "(per_device_batch_size x grad_accum x world size)"
            )
        epoch, i = divmod(step, spe)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        perm = torch.randperm(self.n_examples, generator=g)
        return perm[i * self.global_batch:(i + 1) * self.global_batch].tolist()

    def micro_batches(self, step: int, rank: int) -> list[list[int]]:
        idx = self.step_indices(step)
        out = []
        for m in range(self.grad_accum):
            start = (m * self.world + rank) * self.per_device
            out.append(idx[start:start + self.per_device])
        return out


def batch_to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


