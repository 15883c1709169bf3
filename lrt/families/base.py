"""The scoring-family protocol: everything that differs between "one listwise prompt per list" and
"one sequence per (query, candidate)" is decided here, once, instead of by `if` in the trainer,
export, rerank, card and CLI.

A family decides
- its recipe rules beyond the common schema (`check`; the declarative part runs at recipe load,
  `lrt.config.SCORING_MODES`),
- how rows become model inputs: the prompt template (`template`), the collator (`collator`) and
  whether training rows are pair groups (`pairs`),
- the training module DDP/DeepSpeed wraps (`training_module`),
- the in-process ranker used by in-training eval and `lrt rerank` (`ranker`),
- what an export records (`export_meta`: the RerankerMeta fields) and what the card says (`card_mode`,
  `card_kind`, `card_tags`),
- the `lrt rerank --mode`s it accepts and its default (`rerank_modes`, `default_rerank_mode`),
- what `lrt validate` and the run summary say (`validate_text`, `summary_rows`).

Adding a family: one module implementing `Family` and one entry in `lrt.families.FAMILIES`.
Heavy imports (torch, transformers, the ranking engine) stay inside the methods, so the registry is
cheap to import (`lrt validate`, `lrt eval`).
"""
from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

from lrt.config import Recipe


@runtime_checkable
class Family(Protocol):
    name: str
    """the recipe's `scoring.mode` and the export's `lrt_reranker.json` `mode`."""
    pairs: bool
    """True: one sequence per (query, candidate) (training rows are pair groups); False: one prompt per list."""
    rerank_modes: tuple[str, ...]
    """the `lrt rerank --mode` / `Reranker(mode=...)` values an export of this family can rerank in."""
    default_rerank_mode: str
    """the mode an export of this family reranks in unless told otherwise."""
    card_kind: str
    """one word for the card's first sentence: 'listwise' or 'pointwise'."""

    def check(self, r: Recipe) -> list[str]:
        """Problems of `r` specific to this family (each names the key and the fix); [] when fine."""

    def validate_text(self, r: Recipe) -> str:
        """How `lrt validate`'s ok line describes the scoring, e.g. 'identifiers alpha'."""

    def template(self, r: Recipe) -> Any:
        """The prompt template training encodes with (and the export records)."""

    def collator(self, r: Recipe, pad_id: int) -> Any:
        """Rows -> padded model inputs (a callable over a list of rows)."""

    def training_module(self, model: Any, objective: Any, r: Recipe, tok: Any, template: Any) -> Any:
        """The nn.Module the trainer (DDP / DeepSpeed) wraps: (batch, dens, scale) -> (loss, numerators)."""

    def can_evaluate(self, id_ids: Sequence[int] | None) -> bool:
        """Whether in-training eval can score (a listwise model needs its identifier token ids)."""

    def ranker(self, model: Any, tok: Any, template: Any, r: Recipe, *, window: int, stride: int) -> Any:
        """The in-process ranker in-training eval runs (`rerank_many`, `progress_desc`, `last_stats`)."""

    def export_meta(self, r: Recipe, tok: Any) -> Any:
        """The RerankerMeta an export of a model trained with `r` records (lrt_reranker.json)."""

    def card_mode(self, r: Recipe) -> tuple[str, str]:
        """(the rerank mode to use, one sentence on what the objective trained) for the model card."""

    def card_tags(self, mode: str) -> list[str]:
        """Hub tags naming the family and the trained rerank mode."""

    def summary_rows(self, s: dict[str, Any]) -> list[tuple[str, str]]:
        """The run summary's rows about the training data (lists / pairs, tokens, truncation)."""
