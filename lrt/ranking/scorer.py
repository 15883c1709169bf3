"""The backend protocol between the ranking engine and whatever runs the model.

The engine (`ListwiseRanker`) renders every window itself (the training encoder, the passage
budget, the identifier probe) and hands a backend plain requests; a backend returns scores or
decoded text and adds what it did (calls, tokens, missing identifiers) to the `RerankStats` it is
given. Neither side touches the other's members: the in-process model (`InProcessScorer`) and the
OpenAI-compatible server (`lrt.rerank.openai.OpenAIBackend`) implement the same two methods.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

import torch

from lrt.data.collate import Encoded
from lrt.ranking.stats import RerankStats


@dataclass(frozen=True)
class ScoreRequest:
    """One window to score: `encoded` is prompt + "[" (answer position last); `identifier_ids` the
    single-token ids of its candidates' identifiers, display order."""

    qid: str
    encoded: Encoded
    identifier_ids: list[int]


@dataclass(frozen=True)
class GenerateRequest:
    """One window to decode greedily: the prompt without the answer, and how many new tokens to
    decode at most (`exact_length`: exactly that many, ignoring EOS, as the benchmark times)."""

    qid: str
    prompt_ids: list[int]
    max_new_tokens: int
    exact_length: bool = False


@runtime_checkable
class WindowScorer(Protocol):
    name: str
    """the backend's name in the stats and `lrt rerank`'s summary ("hf", "openai")."""

    def score(self, requests: Sequence[ScoreRequest], stats: RerankStats) -> list[torch.Tensor]:
        """fp32 CPU log p(identifier | prompt + "[") of each request's identifiers, in order."""

    def generate(self, requests: Sequence[GenerateRequest], stats: RerankStats) -> list[str]:
        """Each request's decoded continuation (special tokens kept), in order."""
