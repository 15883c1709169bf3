"""The module DDP / DeepSpeed wrap: batch -> weighted loss, never full-vocabulary logits."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from lrt.scoring import decoder_and_head, eval_mode, full_precision, hidden_states
from lrt.objective.objective import Objective


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
        self._reference: nn.Module | None = None
        if objective.needs_reference and not hasattr(model, "disable_adapter"):
            import copy

            # Full fine-tuning: a frozen copy of the initial policy, kept out of parameters() so
            # neither the optimizer nor DDP/DeepSpeed see it (2x weights in memory; prefer LoRA).
            ref = copy.deepcopy(model).eval().requires_grad_(False)
            object.__setattr__(self, "_reference", ref)
        _, head = decoder_and_head(model)
        if hasattr(head.weight, "ds_id"):
            import deepspeed

            deepspeed.zero.register_external_parameter(self, head.weight)

    def forward(  # type: ignore[override]
        self, batch: dict[str, torch.Tensor], dens: dict[str, float], scale: float
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        decoder, head = decoder_and_head(self.model)
        bias = getattr(head, "bias", None)
        seq = None
        if self.objective.sequence_terms:  # lipo_k: the row forward keeps its KV cache for the K answers
            from lrt.objective.lipo_k import prefix_forward

            h, cache = prefix_forward(decoder, batch)
            seq = self.sequence_inputs(batch, decoder, head, h, cache)
        else:
            h = hidden_states(decoder, batch)
        lipo = any(t.kind == "lipo" for t in self.objective.terms)
        ref = self.reference_logprobs(batch) if lipo else None
        with full_precision(h):  # scores, log-probs and losses in fp32 under any autocast
            nums, _ = self.objective.numerators(h, batch, head.weight, bias, ref, seq)
            loss = self.objective.combine(nums, dens, scale)
        return loss, {k: v.detach() for k, v in nums.items()}

    def sequence_inputs(self, batch: dict[str, torch.Tensor], decoder: nn.Module, head: nn.Module, h: torch.Tensor,
                        cache: object) -> dict[str, tuple[torch.Tensor, ...]]:
        """(policy, reference, labels) [B, K] per `lipo_k` term: K rankings of each list (teacher +
        seeded perturbations), their nDCG labels, whole-answer log-probs under both models."""
        from lrt.losses.lipo_k import perturbed_orders, ranking_labels
        from lrt.objective import lipo_k as lk

        out: dict[str, tuple[torch.Tensor, ...]] = {}
        chunk = self.objective.chunk_rows(head.weight.shape[0])
        for i, t in enumerate(self.objective.sequence_terms):
            p = t.params or {}
            orders = perturbed_orders(batch["ranks"], lk.list_seeds(batch, int(p["seed"])), int(p["num_rankings"]),
                                      str(p["perturb"]), int(p["swaps"]))
            labels = ranking_labels(orders, batch["ranks"], batch.get("relevance"), p["k"])
            tokens, mask, start = lk.answers(batch, orders)
            if i:  # the cache was consumed (repeated, extended) by the previous term
                h, cache = lk.prefix_forward(decoder, batch)
            policy = lk.sequence_logprobs(decoder, head.weight, getattr(head, "bias", None), batch, h, cache,
                                          tokens, mask, start, chunk)
            out[t.name] = (policy, self.reference_sequence_logprobs(batch, tokens, mask, start, chunk), labels)
        return out

    @torch.no_grad()
    def reference_sequence_logprobs(self, batch: dict[str, torch.Tensor], tokens: torch.Tensor, mask: torch.Tensor,
                                    start: torch.Tensor, chunk: int) -> torch.Tensor:
        """The frozen reference's whole-answer log-probs [B, K] (eval mode, no grad)."""
        from lrt.objective import lipo_k as lk

        ref_model, ctx = self._reference_model(batch)
        with ctx, eval_mode(ref_model):
            decoder, head = decoder_and_head(ref_model)
            h, cache = lk.prefix_forward(decoder, batch)
            return lk.sequence_logprobs(decoder, head.weight, getattr(head, "bias", None), batch, h, cache,
                                        tokens, mask, start, chunk)

    def _reference_model(self, batch: dict[str, torch.Tensor]) -> tuple[nn.Module, contextlib.AbstractContextManager]:
        if self._reference is None:
            return self.model, self.model.disable_adapter()
        if next(self._reference.parameters()).device != batch["input_ids"].device:
            self._reference.to(batch["input_ids"].device)
        return self._reference, contextlib.nullcontext()

    @torch.no_grad()
    def reference_logprobs(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The frozen reference's identifier log-probs: the LoRA base with adapters disabled (exactly
        the initial policy, no extra memory), or the frozen copy made at construction. Run in eval
        mode: pi_ref is the model itself, without NEFTune noise or dropout."""
        from lrt.scoring import identifier_scores
        from lrt.objective.objective import identifier_logprobs

        if self._reference is None:
            ctx = self.model.disable_adapter()
            ref_model = self.model
        else:
            ctx = contextlib.nullcontext()
            ref_model = self._reference
            if next(ref_model.parameters()).device != batch["input_ids"].device:
                ref_model.to(batch["input_ids"].device)
        with ctx, eval_mode(ref_model):
            decoder, head = decoder_and_head(ref_model)
            h = hidden_states(decoder, batch)
            bias = getattr(head, "bias", None)
            with full_precision(h):
                s = identifier_scores(h, batch["answer_pos"], batch["cand_ids"], head.weight, bias)
                return identifier_logprobs(h, batch["answer_pos"], s, head.weight, bias)


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
