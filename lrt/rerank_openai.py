"""The `openai` reranking backend: the same windows, scored or decoded by an OpenAI-compatible server.

Users serve FIRST models with vLLM or SGLang. This backend sends each window to the server's
*completions* endpoint (`POST {base_url}/completions`), with the prompt rendered by lrt itself
(`Reranker.encode_window`, i.e. the training template and passage budget), so the served model
sees exactly the prompt it was trained on:

- `first_token`: the prompt ends with "[" (rank_llm's fix for its vLLM breakage: read position 0,
  never generate two tokens and hope the first is "["); `max_tokens=1`, `temperature=0`,
  `logprobs=k` (default: the window size; vLLM caps it at its `--max-logprobs`, 20 by default).
  A candidate's score is the top logprob of its identifier. Several returned tokens that decode
  to the same identifier (" A" and "A") are merged by max. Identifiers missing from the top-k are
  handled explicitly: each gets (the smallest returned logprob - 1), i.e. below every returned
  one, so they keep their current relative order; they are counted in
  `last_stats.missing_identifiers` / `windows_with_missing` and reported by `lrt rerank`.
  vLLM's `return_tokens_as_token_ids` keys (`token_id:123`) are understood too.
- `generate`: the prompt without "[", greedy decoding of up to (a full answer + `gen_margin`)
  tokens, parsed with the RankGPT repair parser (`lrt.data.parse`), repairs counted.

Prompt transport: `prompt_format="text"` sends the decoded prompt (what rank_llm does; portable);
a tokenizer that adds BOS by itself gets the rendered BOS text stripped, because vLLM tokenizes
text prompts with `add_special_tokens=True`. `"tokens"` sends the token ids (exact on vLLM/SGLang).
Retries, concurrency (windows of one sliding step run in parallel) and the API key are the shared
client's (`lrt.io.openai_client`), as in the data-prep teacher.
"""
from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any, Sequence

import torch

from lrt.data.prompts import identifier_labels
from lrt.errors import LrtError
from lrt.io.openai_client import OpenAIClient

if TYPE_CHECKING:
    from lrt.rerank import Reranker, Window

log = logging.getLogger("lrt")
PROMPT_FORMATS = ("text", "tokens")
MISSING_MARGIN = 1.0  # missing identifiers score this far below the smallest returned logprob


def top_logprobs(out: dict[str, Any]) -> tuple[list[tuple[str, float]], dict[str, Any]]:
    """(token, logprob) pairs of the first generated position, and the usage, from a completions
    answer. Accepts the legacy `{token: logprob}` dict (vLLM, SGLang) and the list-of-objects form.
    A 200 answer without logprobs is a configuration problem, not a transient one: no retry."""
    ch = out["choices"][0]
    lp = ch.get("logprobs")
    if not lp or not lp.get("top_logprobs"):
        raise LrtError("the server answered without top logprobs; mode first_token needs a completions endpoint "
                       "that returns them (vLLM, SGLang); use --mode generate for a server without logprobs")
    top = lp["top_logprobs"][0]
    if isinstance(top, dict):
        pairs = [(str(t), float(v)) for t, v in top.items()]
    elif isinstance(top, list):
        pairs = [(str(e["token"]), float(e["logprob"])) for e in top]
    else:
        raise TypeError("top_logprobs[0] is neither an object nor a list")
    if any(math.isnan(v) for _, v in pairs):
        raise ValueError("NaN logprob")
    return pairs, out.get("usage") or {}


def completion_text(out: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    text = out["choices"][0]["text"]
    if not isinstance(text, str):
        raise TypeError("text is not a string")
    return text, out.get("usage") or {}


def identifier_scores_from_top(pairs: Sequence[tuple[str, float]], labels: Sequence[str],
                               token_ids: Sequence[int] | None = None) -> tuple[list[float], int]:
    """Per-identifier scores from a top-k list: max over tokens decoding to the same identifier
    (surrounding whitespace ignored); missing ones get min(returned) - MISSING_MARGIN. Returns
    (scores, number missing)."""
    by_label = {lab: j for j, lab in enumerate(labels)}
    by_id = {int(t): j for j, t in enumerate(token_ids or [])}
    best: dict[int, float] = {}
    for tok, v in pairs:
        j = by_id.get(int(tok[9:])) if tok.startswith("token_id:") and tok[9:].isdigit() else by_label.get(tok.strip())
        if j is not None and v > best.get(j, -math.inf):
            best[j] = v
    floor = (min(v for _, v in pairs) if pairs else 0.0) - MISSING_MARGIN
    return [best.get(j, floor) for j in range(len(labels))], len(labels) - len(best)


class OpenAIBackend:
    """Scores or decodes a `Reranker`'s windows through `client` (see the module docstring)."""

    name = "openai"

    def __init__(self, client: OpenAIClient, model: str, *, logprobs: int | None = None,
                 prompt_format: str = "text") -> None:
        if prompt_format not in PROMPT_FORMATS:
            raise LrtError(f"prompt format {prompt_format!r}: choose one of {', '.join(PROMPT_FORMATS)}")
        if logprobs is not None and logprobs < 1:
            raise LrtError(f"--logprobs must be >= 1 (got {logprobs})")
        self.client, self.model, self.logprobs, self.prompt_format = client, model, logprobs, prompt_format
        self._warned = False

    def __repr__(self) -> str:
        return f"OpenAIBackend({self.client.public_url!r}, model={self.model!r})"

    def prompt(self, rr: "Reranker", ids: list[int]) -> str | list[int]:
        """What goes into the request's `prompt`: token ids, or their text (BOS text stripped when
        the server's tokenizer will add it again)."""
        if self.prompt_format == "tokens":
            return list(ids)
        tok = rr.tok
        text = tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if not self._warned and tok(text, add_special_tokens=False)["input_ids"] != list(ids):
            self._warned = True
            log.warning("the decoded prompt does not re-tokenize to the same ids with this tokenizer; the server may "
                        "see a slightly different prompt: use --prompt-format tokens for an exact prompt")
        bos = getattr(tok, "bos_token", None)
        server_adds_bos = bool(bos) and tok("x")["input_ids"][:1] == [tok.bos_token_id]
        if server_adds_bos and text.startswith(bos):
            text = text[len(bos):]
        elif server_adds_bos and not self._warned:
            self._warned = True
            log.warning("the model was trained without BOS but a server tokenizing this text prompt adds one (vLLM: "
                        "add_special_tokens=True): use --prompt-format tokens for the trained prompt")
        return text

    def _raise_unanswered(self, qid: str, error: str | None) -> None:
        raise LrtError(f"query {qid}: the server did not answer a window ({error}); check the server log, "
                       f"--base-url {self.client.public_url} and --model {self.model}")

    def score_windows(self, rr: "Reranker", items: Sequence["Window"]) -> list[torch.Tensor]:
        from lrt.rerank import _unpack

        unpacked = [_unpack(it) for it in items]
        rr._identifier_ids(max(len(c) for _, _, c in unpacked))
        payloads = []
        for it, (_, _, cands) in zip(items, unpacked):
            enc = rr.encode_window(it)  # prompt + "[": the tokens up to the first identifier
            payloads.append({"model": self.model, "prompt": self.prompt(rr, enc.input_ids), "max_tokens": 1,
                             "temperature": 0, "logprobs": self.logprobs or len(cands)})
        answers = self.client.map(lambda p: self.client.request("completions", p, top_logprobs), payloads,
                                  thread_name="lrt-rerank")
        out: list[torch.Tensor] = []
        st = rr._stats
        for (qid, _, cands), ans in zip(unpacked, answers):
            if ans.value is None:
                self._raise_unanswered(qid, ans.error)
            pairs, usage = ans.value
            labels = identifier_labels(rr.template.identifiers, len(cands))
            scores, missing = identifier_scores_from_top(pairs, labels, rr._identifier_ids(len(cands)))
            st.missing_identifiers += missing
            st.windows_with_missing += bool(missing)
            st.batches += 1
            st.prompt_tokens += int(usage.get("prompt_tokens") or 0)
            out.append(torch.tensor(scores, dtype=torch.float32))
        return out

    def generate_windows(self, rr: "Reranker", items: Sequence["Window"]) -> list[list[int]]:
        from lrt.rerank import _unpack

        unpacked = [_unpack(it) for it in items]
        payloads = []
        for it in items:
            enc = rr.encode_window(it, for_generate=True)
            target = len(enc.input_ids) - enc.target_start
            n_new = target if rr.gen_force_length else target + rr.gen_margin
            payloads.append({"model": self.model, "prompt": self.prompt(rr, enc.input_ids[: enc.target_start]),
                             "max_tokens": n_new, "temperature": 0})
        answers = self.client.map(lambda p: self.client.request("completions", p, completion_text), payloads,
                                  thread_name="lrt-rerank")
        out: list[list[int]] = []
        st = rr._stats
        for (qid, _, cands), ans in zip(unpacked, answers):
            if ans.value is None:
                self._raise_unanswered(qid, ans.error)
            text, usage = ans.value
            st.batches += 1
            st.prompt_tokens += int(usage.get("prompt_tokens") or 0)
            st.generated_tokens += int(usage.get("completion_tokens") or 0)
            out.append(rr._parse(text, len(cands)))
        return out
