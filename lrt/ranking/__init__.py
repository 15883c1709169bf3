"""The in-process ranking engine, shared by in-training evaluation (`lrt.train`) and `lrt rerank`
(`lrt.rerank`, which adds loading exports and the OpenAI-compatible backend on top).

- `defaults`: the eval window and the first-stage diagnostic, shared by training, export and rerank;
- `meta`: what an export records (`RerankerMeta`, `lrt_reranker.json`) and its tokenizer;
- `modes`: the rerank modes and which ranker runs each (`RANKERS`, `ranker_class`);
- `windows`: the sliding-window plan and the score rule (`monotone_scores`, `final_scores`);
- `listwise`: `ListwiseRanker` (first_token, full, generate) over a `scorer.WindowScorer` backend,
  `inprocess.InProcessScorer` being the in-process model;
- `pairs`: `PairRanker` (pointwise yes/no pairs);
- `stats`: `RerankStats`, what one call did.
"""
from __future__ import annotations

from lrt.ranking.defaults import (
    DEFAULT_WINDOW, FIRST_STAGE_K, FIRST_STAGE_WARN, default_window, first_stage_counts, first_stage_share,
)
from lrt.ranking.inprocess import InProcessScorer, answer_logsumexp
from lrt.ranking.listwise import ListwiseRanker, Mode
from lrt.ranking.meta import META_FILE, TOKENIZER_FILES, RerankerMeta, load_export_tokenizer
from lrt.ranking.modes import LISTWISE_MODES, MODES, PAIR_MODES, check_mode, default_mode, pair_mode
from lrt.ranking.pairs import PairRanker
from lrt.ranking.scorer import GenerateRequest, ScoreRequest, WindowScorer
from lrt.ranking.stats import RerankStats
from lrt.ranking.windows import SCORE_STEP, Query, Window, final_scores, monotone_scores, sliding_windows, unpack_window

# the one lookup from a rerank mode to the ranker class that runs it
RANKERS: dict[str, type] = {**dict.fromkeys(LISTWISE_MODES, ListwiseRanker), **dict.fromkeys(PAIR_MODES, PairRanker)}


def ranker_class(mode: str) -> type:
    """The ranker class for rerank `mode` (an unknown mode is one clear error)."""
    check_mode(mode)
    return RANKERS[mode]


__all__ = [
    "DEFAULT_WINDOW", "FIRST_STAGE_K", "FIRST_STAGE_WARN", "default_window", "first_stage_counts", "first_stage_share",
    "GenerateRequest", "InProcessScorer", "LISTWISE_MODES", "ListwiseRanker", "META_FILE", "MODES", "Mode",
    "PAIR_MODES", "PairRanker", "Query", "RANKERS", "RerankStats", "RerankerMeta", "SCORE_STEP", "ScoreRequest",
    "TOKENIZER_FILES", "Window", "WindowScorer", "answer_logsumexp", "check_mode", "default_mode", "final_scores",
    "load_export_tokenizer", "monotone_scores", "pair_mode", "ranker_class", "sliding_windows", "unpack_window",
]
