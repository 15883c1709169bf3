"""`lrt rerank`'s library: load an export and rerank with it, in-process or through an
OpenAI-compatible server. The engine itself (windows, scoring, stats) is `lrt.ranking`; its public
names are re-exported here so `from lrt.rerank import Reranker, RerankerMeta` is the one import."""
from __future__ import annotations

from lrt.ranking import (
    META_FILE, MODES, SCORE_STEP, TOKENIZER_FILES, Mode, Query, RerankerMeta, RerankStats, Window, WindowScorer,
    answer_logsumexp, final_scores, load_export_tokenizer, monotone_scores, sliding_windows,
)
from lrt.rerank.load import check_device, load_export_model
from lrt.rerank.reranker import PointwiseReranker, Reranker

BACKENDS: tuple[str, ...] = ("hf", "openai")

__all__ = [
    "BACKENDS", "META_FILE", "MODES", "Mode", "PointwiseReranker", "Query", "Reranker", "RerankerMeta", "RerankStats",
    "SCORE_STEP", "TOKENIZER_FILES", "Window", "WindowScorer", "answer_logsumexp", "check_device", "final_scores",
    "load_export_model", "load_export_tokenizer", "monotone_scores", "sliding_windows",
]
