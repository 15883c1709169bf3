"""The rerank modes and which ranker runs each: the ONE place the engine tells pair scoring from
listwise scoring (every other module asks `pair_mode(mode)` / `ranker_class(mode)`, never compares
mode strings). The scoring families (`lrt.families`, above this layer) map onto these modes."""
from __future__ import annotations

from lrt.errors import LrtError

LISTWISE_MODES: tuple[str, ...] = ("first_token", "full", "generate")  # windows of candidates: ListwiseRanker
PAIR_MODES: tuple[str, ...] = ("pointwise",)  # one sequence per (query, candidate), yes/no scores: PairRanker
MODES: tuple[str, ...] = LISTWISE_MODES + PAIR_MODES
DEFAULT_LISTWISE_MODE = "first_token"


def pair_mode(mode: str | None) -> bool:
    """Whether `mode` (a rerank mode or an export's `lrt_reranker.json` mode) scores (query, passage) pairs."""
    return mode in PAIR_MODES


def default_mode(export_mode: str | None) -> str:
    """How an export reranks unless told otherwise: its own pair scoring, else first-token."""
    return export_mode if export_mode is not None and pair_mode(export_mode) else DEFAULT_LISTWISE_MODE


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise LrtError(f"unknown rerank mode {mode!r}; choose one of {', '.join(MODES)}")
