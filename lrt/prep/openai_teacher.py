"""A teacher behind any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, TGI, ...).

HTTP, retries with backoff and concurrency live in the shared `lrt.io.openai_client`; each answer
is handed to `on_response` the moment it arrives so the cache commits it before anything else can
fail. The API key is read from the environment variable *named* in the job and lives only in the
client's request headers: never in the cache key, the card, the call log or messages. A server
that echoes the request cannot leak it either: error bodies and answers are redacted of the key
and of any `Bearer` token before they are stored or printed, and `user:password@` is cut from URLs.
"""
from __future__ import annotations

import urllib.parse
from typing import Any, Callable, Sequence

from lrt.data.prompts import PromptTemplate, identifier_labels, render_messages
from lrt.errors import LrtError
from lrt.io.openai_client import REDACTED, OpenAIClient, redact  # noqa: F401 - redaction lives in the shared client
from lrt.io.openai_client import public_url as _public_url
from lrt.prep.teachers import (OnResponse, WindowRequest, WindowResponse, prepare_passages, response_from_raw,
                               stable_hash)


def check_base_url(url: str) -> None:
    """An http(s) URL with a host, or a clear error before any request (not from a worker thread)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LrtError(f"teacher.base_url {url!r} is not an http(s) URL; give the API root, e.g. "
                       "https://api.openai.com/v1 or http://localhost:8000/v1")


class OpenAITeacher:
    kind = "openai"

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        template: PromptTemplate,
        api_key_env: str | None = "OPENAI_API_KEY",
        concurrency: int = 8,
        timeout_s: float = 120.0,
        max_retries: int = 6,
        backoff_s: float = 1.0,
        backoff_max_s: float = 60.0,
        max_tokens: int | None = None,
        max_passage_words: int | None = 300,
        truncate: Callable[[str], str] | None = None,
    ) -> None:
        check_base_url(base_url)
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.public_url = _public_url(self.url)
        self.model = model
        self.template = template
        self.scheme = template.identifiers
        self.api_key_env = api_key_env
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.max_tokens = max_tokens
        self.max_passage_words = max_passage_words
        self.truncate = truncate  # token-based truncation (prompt.tokenizer), applied before words
        # retries, concurrency, the key and its redaction live in the shared client
        self.client = OpenAIClient(
            base_url, api_key_env=api_key_env, concurrency=concurrency, timeout_s=timeout_s, max_retries=max_retries,
            backoff_s=backoff_s, backoff_max_s=backoff_max_s, key_option="teacher.api_key_env", url_option="teacher.base_url",
            fix_hint="check teacher.base_url, teacher.model and teacher.api_key_env", calls_key="teacher_calls")

    def __repr__(self) -> str:  # no headers: they hold the key
        return f"OpenAITeacher(url={self.public_url!r}, model={self.model!r})"

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": self.model, "base_url": self.public_url, "api_key_env": self.api_key_env,
                "temperature": 0, "max_tokens": self.max_tokens, "identifiers": self.scheme,
                "max_passage_words": self.max_passage_words}

    def messages(self, req: WindowRequest) -> list[dict[str, str]]:
        texts = [self.truncate(p) for p in req.passages] if self.truncate else list(req.passages)
        passages = prepare_passages(texts, self.max_passage_words, self.template.escape)
        return render_messages(self.template, req.query, passages, identifier_labels(self.scheme, len(passages)))

    def _payload(self, req: WindowRequest) -> dict[str, Any]:
        n = len(req.docids)
        # "[12] > " is ~5 tokens; leave room so a complete answer is never cut by the limit
        max_tokens = self.max_tokens or 8 * n + 32
        return {"model": self.model, "messages": self.messages(req), "temperature": 0, "max_tokens": max_tokens}

    def cache_key(self, req: WindowRequest) -> str:
        return stable_hash([self.kind, self.public_url, self._payload(req)])

    def stats(self) -> dict[str, int]:
        return self.client.stats()

    @staticmethod
    def _text(out: dict[str, Any]) -> str:
        msg = out["choices"][0]["message"]
        text = msg["content"] if msg.get("content") is not None else ""  # refusal: an answer
        if not isinstance(text, str):
            raise TypeError("content is not a string")
        return text

    def _call(self, req: WindowRequest) -> WindowResponse:
        """One window, retried by the shared client until it answers or the retries are spent."""
        ans = self.client.request("chat/completions", self._payload(req), self._text)
        if ans.value is None:
            return WindowResponse(None, None, error=ans.error)
        # the answer goes into the cache and call log: an echoing server must not put the key there
        return response_from_raw(self.client.redact(ans.value), len(req.docids), self.scheme, attempts=ans.attempts,
                                 latency_s=ans.latency_s)

    def rank_windows(self, requests: Sequence[WindowRequest], on_response: OnResponse | None = None) -> list[WindowResponse]:
        # on_response runs in this thread: the cache connection is not shared
        return self.client.map(self._call, requests, on_response, thread_name="lrt-teacher")
