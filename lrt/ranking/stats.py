"""`RerankStats`: what one `rerank_many` call did, filled in by the ranker and its scorer."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class RerankStats:
    """What one `rerank_many` call did. `valid_share` (generate mode) is the share of decoded
    outputs that were already a complete permutation, i.e. needed no RankGPT repair."""

    mode: str
    backend: str = "hf"
    scores: str = "logprob"  # "logprob" (the score rule in lrt.ranking) or "rank" (generate)
    queries: int = 0
    windows: int = 0  # windows ranked by the model (windows of <2 candidates need no call)
    batches: int = 0  # forward / generate calls
    prompt_tokens: int = 0
    generated_tokens: int = 0  # generate mode: new tokens decoded (up to EOS)
    valid: int = 0
    duplicates: int = 0
    out_of_range: int = 0
    missing: int = 0
    # openai scoring modes: how identifier logprobs were got ("token_ids": vLLM's logprob_token_ids, exact;
    # "top_k": the top-`top_logprobs` by token id), and identifiers absent from them (scored below the returned ones)
    logprob_path: str | None = None
    top_logprobs: int = 0
    missing_identifiers: int = 0
    windows_with_missing: int = 0
    seconds: float = 0.0
    repaired_examples: list[str] = field(default_factory=list)  # first few raw outputs that needed repair

    @property
    def valid_share(self) -> float | None:
        return self.valid / self.windows if self.mode == "generate" and self.windows else None

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "repaired_examples"}
        d["valid_share"] = self.valid_share
        return d
