"""The `openai` reranking backend: the same windows, scored or decoded by an OpenAI-compatible server.

Users serve FIRST models with vLLM or SGLang. This backend sends each window to the server's
*completions* endpoint (`POST {base_url}/completions`), with the prompt rendered by lrt itself
(the ranking engine's `ScoreRequest` / `GenerateRequest`, i.e. the training template and passage
budget), so the served model sees exactly the prompt it was trained on:

- `first_token` / `full`: the prompt ends with "[" (rank_llm's fix for its vLLM breakage: read
  position 0, never generate two tokens and hope the first is "["); `max_tokens=1`,
  `temperature=0`. A candidate's score is the logprob of its identifier's TOKEN ID at that position,
  got one of two ways, chosen once per backend by a probe (the first window's own request) and
  recorded in `last_stats.logprob_path`:
  - `token_ids` (exact): vLLM's `logprob_token_ids: [the window's identifier ids]` with
    `logprobs: 1` returns exactly those ids' logprobs: none missing, no top-k cap (full mode: all
    100 `<id_k>` in one request per query), nothing else crowding them out;
  - `top_k` (a server without it): the top-`logprobs` (default 20, vLLM's default
    `--max-logprobs`; never just the window size) with `return_tokens_as_token_ids`, matched by
    token id. Identifiers missing from the top-k each get (the smallest returned logprob - 1),
    i.e. below every returned one, keeping their current relative order; they are counted in
    `last_stats.missing_identifiers` / `windows_with_missing` and reported by `lrt rerank`.
  Identifiers are never matched by decoded text: a word token " A" (or SentencePiece `▁A`, or the
  byte token `<0x41>`) is a different token from the identifier "A" and is never merged into it; a
  server that only returns decoded tokens is refused with a clear error.
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
from typing import Any, Sequence

import torch

from lrt.errors import LrtError
from lrt.io.openai_client import OpenAIClient
from lrt.ranking import GenerateRequest, RerankStats, ScoreRequest

log = logging.getLogger("lrt")
PROMPT_FORMATS = ("text", "tokens")
MISSING_MARGIN = 1.0  # missing identifiers score this far below the smallest returned logprob
DEFAULT_TOP_K = 20  # the top_k path's default: vLLM's default --max-logprobs


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


def identifier_scores_by_id(pairs: Sequence[tuple[str, float]],
                            token_ids: Sequence[int]) -> tuple[list[float], int]:
    """Per-identifier scores from `token_id:N`-keyed logprobs (vLLM's `return_tokens_as_token_ids`),
    matched by id only; missing ids get min(returned) - MISSING_MARGIN. Returns (scores, number
    missing). Decoded-text keys are refused: text cannot tell " A" from "A" (see module docstring)."""
    by_id: dict[int, float] = {}
    for tok, v in pairs:
        if not (tok.startswith("token_id:") and tok[9:].isdigit()):
            raise LrtError(f"the server returned a decoded token ({tok!r}) instead of a token id: lrt scores identifiers "
                           "by token id and needs a server that honours return_tokens_as_token_ids or logprob_token_ids "
                           "(vLLM); use --mode generate for other servers")
        i = int(tok[9:])
        by_id[i] = max(v, by_id.get(i, -math.inf))
    found = [by_id.get(int(t)) for t in token_ids]
    floor = (min(by_id.values()) if by_id else 0.0) - MISSING_MARGIN
    return [floor if v is None else v for v in found], sum(v is None for v in found)


class OpenAIBackend:
    """A `lrt.ranking.WindowScorer`: scores or decodes the engine's windows through `client` (see
    the module docstring). `tokenizer` is the export's, for the text transport."""

    name = "openai"

    def __init__(self, client: OpenAIClient, model: str, tokenizer: Any, *, logprobs: int | None = None,
                 prompt_format: str = "text") -> None:
        if prompt_format not in PROMPT_FORMATS:
            raise LrtError(f"prompt format {prompt_format!r}: choose one of {', '.join(PROMPT_FORMATS)}")
        if logprobs is not None and logprobs < 1:
            raise LrtError(f"--logprobs must be >= 1 (got {logprobs})")
        self.client, self.model, self.logprobs, self.prompt_format = client, model, logprobs, prompt_format
        self.tok = tokenizer
        self._warned = False
        self.logprob_path: str | None = None  # "token_ids" or "top_k", set by the first scoring call's probe

    def __repr__(self) -> str:
        return f"OpenAIBackend({self.client.public_url!r}, model={self.model!r})"

    def prompt(self, ids: list[int]) -> str | list[int]:
        """What goes into the request's `prompt`: token ids, or their text (BOS text stripped when
        the server's tokenizer will add it again)."""
        if self.prompt_format == "tokens":
            return list(ids)
        tok = self.tok
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

    def _payload(self, req: ScoreRequest, exact: bool) -> dict[str, Any]:
        # prompt + "[": the tokens up to the first identifier
        p: dict[str, Any] = {"model": self.model, "prompt": self.prompt(req.encoded.input_ids), "max_tokens": 1,
                             "temperature": 0, "return_tokens_as_token_ids": True}
        if exact:
            p.update(logprobs=1, logprob_token_ids=list(req.identifier_ids))
        else:
            p["logprobs"] = self.logprobs or DEFAULT_TOP_K
        return p

    def _probe(self, req: ScoreRequest) -> Any:
        """Once per backend: does the server answer `logprob_token_ids` with every asked id? Returns
        the probe's answer when it does (it is that window's result), else None (path top_k)."""
        n = len(req.identifier_ids)
        ans = self.client.request("completions", self._payload(req, exact=True), top_logprobs)
        if ans.value is None and "bad_response" in (ans.error or ""):
            # a 200 answer that is malformed after the retries is a broken server, not a missing feature
            self._raise_unanswered(req.qid, ans.error)
        want = {f"token_id:{i}" for i in req.identifier_ids}
        ok = ans.value is not None and want <= {t for t, _ in ans.value[0]}
        self.logprob_path = "token_ids" if ok else "top_k"
        if not ok:
            k = self.logprobs or DEFAULT_TOP_K
            log.warning("the server does not answer logprob_token_ids for %d identifiers (%s): scoring identifiers from "
                        "the top-%d logprobs by token id; identifiers outside them are counted as missing (vLLM >= 0.32 "
                        "answers them exactly when started with --max-logprobs >= %d)",
                        n, ans.error or "the asked ids were not all returned", k, n)
        return ans if ok else None

    def score(self, requests: Sequence[ScoreRequest], stats: RerankStats) -> list[torch.Tensor]:
        sizes = [len(r.identifier_ids) for r in requests]
        big = max(range(len(requests)), key=sizes.__getitem__)  # probe with the most identifiers of the run's first call
        first = self._probe(requests[big]) if self.logprob_path is None else None
        exact = self.logprob_path == "token_ids"
        todo = [i for i in range(len(requests)) if first is None or i != big]
        payloads = [self._payload(requests[i], exact) for i in todo]
        got = self.client.map(lambda p: self.client.request("completions", p, top_logprobs), payloads,
                              thread_name="lrt-rerank")
        answers: list[Any] = [None] * len(requests)
        for i, a in zip(todo, got):
            answers[i] = a
        if first is not None:
            answers[big] = first
        out: list[torch.Tensor] = []
        stats.logprob_path = self.logprob_path
        stats.top_logprobs = 0 if exact else (self.logprobs or DEFAULT_TOP_K)
        for req, ans in zip(requests, answers):
            if ans.value is None:
                self._raise_unanswered(req.qid, ans.error)
            pairs, usage = ans.value
            scores, missing = identifier_scores_by_id(pairs, req.identifier_ids)
            stats.missing_identifiers += missing
            stats.windows_with_missing += bool(missing)
            stats.batches += 1
            stats.prompt_tokens += int(usage.get("prompt_tokens") or 0)
            out.append(torch.tensor(scores, dtype=torch.float32))
        return out

    def generate(self, requests: Sequence[GenerateRequest], stats: RerankStats) -> list[str]:
        # vLLM drops special tokens (`<id_k>`) from the text and spaces them out by default; lrt's
        # in-process decode keeps them as they are (servers without these fields ignore them)
        payloads = [{"model": self.model, "prompt": self.prompt(r.prompt_ids), "max_tokens": r.max_new_tokens,
                     "temperature": 0, "skip_special_tokens": False, "spaces_between_special_tokens": False}
                    for r in requests]
        answers = self.client.map(lambda p: self.client.request("completions", p, completion_text), payloads,
                                  thread_name="lrt-rerank")
        out: list[str] = []
        for req, ans in zip(requests, answers):
            if ans.value is None:
                self._raise_unanswered(req.qid, ans.error)
            text, usage = ans.value
            stats.batches += 1
            stats.prompt_tokens += int(usage.get("prompt_tokens") or 0)
            stats.generated_tokens += int(usage.get("completion_tokens") or 0)
            out.append(text)
        return out
