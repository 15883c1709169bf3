"""`RerankStats`: what one `rerank_many` call did, filled in by the ranker and its scorer."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Sequence

from lrt.ranking.defaults import FIRST_STAGE_K

PER_CALL = ("mode", "backend", "scores", "unit", "logprob_path", "top_logprobs", "max_passage_tokens", "first_stage_k")
LISTS = ("repaired_examples", "passage_tokens")


def percentile(xs: Sequence[int], q: float) -> int:
    """The nearest-rank `q`-th percentile of `xs` (0 when empty), as the run summary reports it."""
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))] if s else 0


def passage_lengths(tokenizer: Any, texts: Sequence[str], chunk: int = 2048) -> list[int]:
    """Tokens of each passage text as the prompt encodes a passage (no special tokens added, special-
    token text split: the count `lrt.data.prompts.truncate_tokens` cuts at)."""
    out: list[int] = []
    for i in range(0, len(texts), chunk):
        ids = tokenizer(list(texts[i:i + chunk]), add_special_tokens=False, split_special_tokens=True)["input_ids"]
        out.extend(len(x) for x in ids)
    return out


@dataclass
class RerankStats:
    """What one `rerank_many` call did. `valid_share` (generate mode) is the share of decoded
    outputs that were already a complete permutation, i.e. needed no RankGPT repair."""

    mode: str
    backend: str = "hf"
    scores: str = "logprob"  # "logprob" (the score rule in lrt.ranking) or "rank" (generate)
    unit: str = "window"  # what `windows` counts: "window" (listwise) or "pair" (one sequence per query-passage pair)
    queries: int = 0
    windows: int = 0  # windows ranked by the model (windows of <2 candidates need no call); pair rankers: pairs
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
    # truncation per passage (issue 23): every reranked passage's tokens as the prompt encodes it, how many
    # are longer than the template's max_passage_tokens (cut), and the windows (pairs) whose passages had to
    # be cut further to fit max_length
    passages: int = 0
    passages_cut: int = 0
    max_passage_tokens: int = 0
    windows_cut: int = 0
    # the first-stage-order diagnostic: queries (of >= 2 candidates) whose reranked top-k is the input top-k
    first_stage_k: int = FIRST_STAGE_K
    first_stage_same: int = 0
    first_stage_queries: int = 0
    repaired_examples: list[str] = field(default_factory=list)  # first few raw outputs that needed repair
    passage_tokens: list[int] = field(default_factory=list)  # per passage (for the percentiles; not in to_dict)

    @property
    def valid_share(self) -> float | None:
        return self.valid / self.windows if self.mode == "generate" and self.windows else None

    @property
    def first_stage_share(self) -> float | None:
        return self.first_stage_same / self.first_stage_queries if self.first_stage_queries else None

    def count_passages(self, lengths: Sequence[int], max_passage_tokens: int) -> None:
        """Record passages of these token lengths under a template budget of `max_passage_tokens`."""
        self.max_passage_tokens = max_passage_tokens
        self.passages += len(lengths)
        self.passages_cut += sum(n > max_passage_tokens for n in lengths)
        self.passage_tokens.extend(int(n) for n in lengths)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k not in LISTS}
        d["valid_share"] = self.valid_share
        d["passage_tokens_p50"] = percentile(self.passage_tokens, 50)
        d["passage_tokens_p95"] = percentile(self.passage_tokens, 95)
        d["passages_cut_share"] = self.passages_cut / self.passages if self.passages else None
        d["first_stage_share"] = self.first_stage_share
        return d

    @classmethod
    def merge(cls, parts: Sequence["RerankStats"]) -> "RerankStats":
        """One call's stats from those of several processes (each reranked a slice of the queries):
        counts add up, `seconds` is the slowest process's, the per-call settings are the first's."""
        out = cls(parts[0].mode)
        for f in fields(cls):
            vals = [getattr(p, f.name) for p in parts]
            if f.name in PER_CALL:
                v: Any = vals[0]
            elif f.name in LISTS:
                v = [x for xs in vals for x in xs]
            elif f.name == "seconds":
                v = max(vals)
            else:
                v = sum(vals)
            setattr(out, f.name, v)
        out.repaired_examples = out.repaired_examples[:5]
        return out
