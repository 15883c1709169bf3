"""The objective as recipe data: a weighted sum of `lm` and ranking-loss terms.

Every term returns a (numerator, denominator) pair for one micro-batch. The trainer sums the
denominators over all micro-batches of an optimizer step and over all data-parallel ranks *before*
the backward passes, so the loss is the exact global mean whatever the gradient accumulation or
world size (a 2-process run reproduces a 1-process run with the same global batch).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from lrt.config import LossTerm, Recipe
from lrt.scoring import identifier_scores, target_nll


REFERENCE_LOSSES = {"lipo_lambda"}  # scored as beta * (log p_policy - log p_reference)
SEQUENCE_LOSSES = {"lipo_k"}  # K whole-answer log-probs per list (lrt.objective.lipo_k), policy vs reference
SAMPLED_LOSSES = {"pg_rank"}  # sample rankings: given each list's seed (batch["list_seed"], see lrt.train.data)


@dataclass
class Term:
    name: str
    weight: float
    kind: str  # "lm" | "rank" | "lipo" | "distill" | "seq"
    fn: Callable[..., torch.Tensor] | None = None
    params: dict[str, Any] | None = None


class Objective:
    """Builds the terms once; `denominators(batch)` and `numerators(...)` per micro-batch."""

    def __init__(self, terms: list[LossTerm]) -> None:
        from lrt.losses.registry import TEACHER_SCORE_LOSSES, check_loss_params, get_ranking_loss

        self.terms: list[Term] = []
        for t in terms:
            check_loss_params(t.name, dict(t.params))  # every bad param of every term (lm too), not a fallback
            if t.name == "lm":
                self.terms.append(Term("lm", t.weight, "lm", params=dict(t.params)))
            elif t.name in SEQUENCE_LOSSES:
                from lrt.losses.lipo_k import LIPO_K_PARAMS, lipo_k

                params = {k: d for k, (d, _) in LIPO_K_PARAMS.items()} | dict(t.params)
                self.terms.append(Term(t.name, t.weight, "seq", lipo_k, params))
            elif t.name in REFERENCE_LOSSES:
                params = dict(t.params)
                beta = float(params.pop("beta", 0.1))
                self.terms.append(Term(t.name, t.weight, "lipo", get_ranking_loss(t.name, **params), {"beta": beta}))
            elif t.name in TEACHER_SCORE_LOSSES:  # score distillation: reads batch["teacher_scores"]
                self.terms.append(Term(t.name, t.weight, "distill", get_ranking_loss(t.name, **t.params)))
            elif t.name in SAMPLED_LOSSES:
                self.terms.append(Term(t.name, t.weight, "pg", get_ranking_loss(t.name, **t.params)))
            else:
                self.terms.append(Term(t.name, t.weight, "rank", get_ranking_loss(t.name, **t.params)))
        lm = self.lm_params
        self._chunk = int(lm["chunk_size"]) if lm is not None and lm.get("chunk_size") else None

    def _want_liger(self, t: Term, w: torch.Tensor | None, hidden: torch.Tensor) -> bool:
        """`lm` param `kernel: liger` selects Liger's fused linear cross-entropy on CUDA for the
        unweighted LM term; elsewhere (CPU, importance weights, no liger) the chunked path runs."""
        if (t.params or {}).get("kernel", "torch") != "liger":
            return False
        ok = hidden.is_cuda and w is None and liger_available()
        if not ok and not getattr(self, "_warned_liger", False):
            import logging

            logging.getLogger("lrt").warning(
                "loss lm kernel=liger needs CUDA, the liger-kernel package and an unweighted lm term: "
                "using the pure-PyTorch chunked cross-entropy"
            )
            self._warned_liger = True
        return ok

    def chunk_rows(self, vocab: int) -> int:
        """LM-loss chunk rows: the recipe's `chunk_size`, else ~64 MiB of fp32 logits per chunk
        (64 rows at Qwen's 152k vocabulary; speed is flat from 64 to 1024 rows, memory is not)."""
        if self._chunk:
            return self._chunk
        rows = (64 * 2**20) // (4 * max(vocab, 1))
        return max(16, min(1024, 1 << max(rows.bit_length() - 1, 0)))

    @classmethod
    def from_recipe(cls, r: Recipe) -> "Objective":
        return cls(r.loss)

    @property
    def lm_params(self) -> dict[str, Any] | None:
        return next((t.params for t in self.terms if t.kind == "lm"), None)

    @property
    def needs_scores(self) -> bool:
        return any(t.kind in ("rank", "lipo", "distill", "seq", "pg") for t in self.terms)

    @property
    def teacher_score_terms(self) -> list[str]:
        """Terms that train on per-candidate teacher scores: the data must carry `teacher_scores`."""
        return [t.name for t in self.terms if t.kind == "distill"]

    @property
    def needs_reference(self) -> bool:
        """A frozen reference model is kept (identifier log-probs and/or sequence log-probs)."""
        return any(t.kind in ("lipo", "seq") for t in self.terms)

    @property
    def sequence_terms(self) -> list[Term]:
        return [t for t in self.terms if t.kind == "seq"]

    @property
    def needs_target(self) -> bool:
        return self.lm_params is not None or bool(self.sequence_terms)

    def token_weights(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Importance-aware weights (fullrank) per target token, or None for plain token-mean NLL."""
        p = self.lm_params or {}
        if not p.get("importance", False):
            return None
        from lrt.losses.lm import importance_weights

        return importance_weights(batch["lm_token_ranks"], alpha=float(p.get("alpha", 1.0)))

    def denominators(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """This micro-batch's share of each term's global denominator (summed by the trainer)."""
        out: dict[str, float] = {}
        for t in self.terms:
            if t.kind == "lm":
                w = self.token_weights(batch)
                by_weights = (t.params or {}).get("normalize", "tokens") == "weights" and w is not None
                out["lm"] = float(w.sum()) if by_weights else float(batch["lm_targets"].numel())
            else:
                out[t.name] = float(batch["ranks"].shape[0])
        return out

    def numerators(
        self, hidden: torch.Tensor, batch: dict[str, torch.Tensor], weight: torch.Tensor, bias: torch.Tensor | None,
        ref_logps: torch.Tensor | None = None, seq: dict[str, tuple[torch.Tensor, ...]] | None = None,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """Sum-reduced value of every term on this micro-batch (fp32), and the [B, N] scores.

        `ref_logps` [B, N]: the frozen reference model's identifier log-probs (LiPO terms only).
        `seq[name]` = (policy [B, K], reference [B, K], labels [B, K]) for each `lipo_k` term."""
        out: dict[str, torch.Tensor] = {}
        scores = None
        if self.needs_scores:
            scores = identifier_scores(hidden, batch["answer_pos"], batch["cand_ids"], weight, bias)
        for t in self.terms:
            if t.kind == "lm":
                w = self.token_weights(batch)
                fused = fused_lm_sum(hidden, batch, weight, bias) if self._want_liger(t, w, hidden) else None
                if fused is not None:
                    out["lm"] = fused
                    continue
                nll = target_nll(hidden, batch, weight, bias, self.chunk_rows(weight.shape[0]))
                out["lm"] = (nll * w).sum() if w is not None else nll.sum()
            elif t.kind == "seq":
                from lrt.losses import lipo_scores

                assert t.fn is not None and t.params is not None
                if seq is None or t.name not in seq:
                    raise RuntimeError(f"loss {t.name} needs the policy's and reference's answer log-probs")
                policy, ref, labels = seq[t.name]
                out[t.name] = t.fn(lipo_scores(policy, ref, float(t.params["beta"])), labels, reduction="sum")
            elif t.kind == "lipo":
                from lrt.losses import lipo_scores

                assert t.fn is not None and scores is not None and t.params is not None
                if ref_logps is None:
                    raise RuntimeError(f"loss {t.name} needs the reference model's log-probs")
                policy = identifier_logprobs(hidden, batch["answer_pos"], scores, weight, bias)
                s = lipo_scores(policy, ref_logps, t.params["beta"])
                out[t.name] = t.fn(s, batch["ranks"], batch.get("relevance"), reduction="sum")
            elif t.kind == "distill":
                assert t.fn is not None and scores is not None
                out[t.name] = t.fn(scores, batch["ranks"], _teacher_scores(batch, t.name), reduction="sum")
            elif t.kind == "pg":
                assert scores is not None
                out[t.name] = self._sampled_term(t, scores, batch)
            else:
                assert t.fn is not None and scores is not None
                out[t.name] = t.fn(scores, batch["ranks"], batch.get("relevance"), reduction="sum")
        return out, scores

    def score_numerators(self, scores: torch.Tensor, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Sum-reduced ranking terms on given [B, N] scores (pointwise groups: no hidden states here)."""
        out = {t.name: t.fn(scores, batch["ranks"], batch.get("relevance"), reduction="sum")  # type: ignore[misc]
               for t in self.terms if t.kind == "rank"}
        out.update({t.name: t.fn(scores, batch["ranks"], _teacher_scores(batch, t.name), reduction="sum")  # type: ignore[misc]
                    for t in self.terms if t.kind == "distill"})
        out.update({t.name: self._sampled_term(t, scores, batch) for t in self.terms if t.kind == "pg"})
        return out

    def _sampled_term(self, t: Term, scores: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """A sampling term (pg_rank) with each list's seed from the step stream: the same draws for any
        split of the global batch and after a resume. Without one (a batch built by hand) a list is
        seeded by its labels: deterministic, but the same draws every step, so say so once."""
        assert t.fn is not None
        seeds = batch.get("list_seed")
        if seeds is None and not getattr(self, "_warned_seeds", False):
            import logging

            logging.getLogger("lrt").warning("loss %s: the batch has no list_seed; its lists are seeded by their "
                                             "labels (the same rankings are sampled every step)", t.name)
            self._warned_seeds = True
        return t.fn(scores, batch["ranks"], batch.get("relevance"), seeds, reduction="sum")

    def combine(
        self, nums: dict[str, torch.Tensor], dens: dict[str, float], scale: float = 1.0
    ) -> torch.Tensor:
        """Σ_t w_t · num_t / den_t · scale, where `dens` are the *global* step denominators."""
        total = torch.zeros((), dtype=torch.float32, device=next(iter(nums.values())).device)
        for t in self.terms:
            key = "lm" if t.kind == "lm" else t.name
            total = total + t.weight * nums[key] / max(dens[key], 1e-12)
        return total * scale


def _teacher_scores(batch: dict[str, torch.Tensor], term: str) -> torch.Tensor:
    """The batch's [B, N] teacher scores (checked at data load, so a miss here is a bug, not the user's)."""
    if "teacher_scores" not in batch:
        raise RuntimeError(f"loss {term} needs batch['teacher_scores']; the data loader should have refused this data")
    return batch["teacher_scores"]


def identifier_logprobs(
    hidden: torch.Tensor, answer_pos: torch.Tensor, scores: torch.Tensor, weight: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """log p(identifier_i | prompt) over the full vocabulary at the answer position, [B, N].

    The normaliser needs one [B, V] row per list (never [B, T, V]); scores are the identifier logits."""
    B = hidden.shape[0]
    h = hidden[torch.arange(B, device=hidden.device), answer_pos].float()
    logits = h @ weight.float().T
    if bias is not None:
        logits = logits + bias.float()
    return scores - torch.logsumexp(logits, dim=-1, keepdim=True)


def liger_available() -> bool:
    try:
        import liger_kernel.transformers  # noqa: F401
    except ImportError:
        return False
    return True


def fused_lm_sum(
    hidden: torch.Tensor, batch: dict[str, torch.Tensor], weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """Σ NLL over target tokens with Liger's fused linear cross-entropy (CUDA): it never builds
    the logits either, and computes the head gradient during the forward pass."""
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    from lrt.scoring import gather_target_hidden

    h = gather_target_hidden(hidden, batch["lm_flat_pos"])
    return LigerFusedLinearCrossEntropyLoss(reduction="sum")(weight, h, batch["lm_targets"], bias).float()
