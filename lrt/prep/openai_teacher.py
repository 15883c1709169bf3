"""A teacher behind any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, TGI, ...).

Standard library only (urllib + threads): a data-prep box needs no SDK, and the retry policy is
ours to test. Requests run concurrently up to `concurrency`; 429, 5xx, timeouts and dropped
connections are retried with exponential backoff (honouring `Retry-After`); each answer is handed
to `on_response` the moment it arrives so the cache commits it before anything else can fail.
The API key is read from the environment variable *named* in the job and lives only in this
object's request headers: it is never part of the cache key, the card, the call log or messages.
"""
from __future__ import annotations

import http.client
import json
import os
import random
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Any, Callable, Sequence

from lrt.data.prompts import PromptTemplate, identifier_labels, render_messages
from lrt.errors import LrtError
from lrt.prep.teachers import (OnResponse, WindowRequest, WindowResponse, prepare_passages, response_from_raw,
                               stable_hash)

_FATAL = {401: "authentication failed", 403: "permission denied", 404: "endpoint or model not found"}


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
        self.url = base_url.rstrip("/") + "/chat/completions"
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
        self._headers = {"Content-Type": "application/json"}
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise LrtError(f"teacher.api_key_env names ${api_key_env}, which is not set; export it "
                               "(the key is never written to the job, cache or logs) or set api_key_env: null "
                               "for a server without authentication")
            self._headers["Authorization"] = f"Bearer {key}"
        self._lock = threading.Lock()
        self._stats: Counter = Counter()

    def __repr__(self) -> str:  # no headers: they hold the key
        return f"OpenAITeacher(url={self.url!r}, model={self.model!r})"

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": self.model, "base_url": self.url, "api_key_env": self.api_key_env,
                "temperature": 0, "max_tokens": self.max_tokens, "identifiers": self.scheme,
                "max_passage_words": self.max_passage_words}

    def messages(self, req: WindowRequest) -> list[dict[str, str]]:
        texts = [self.truncate(p) for p in req.passages] if self.truncate else list(req.passages)
        passages = prepare_passages(texts, self.max_passage_words)
        return render_messages(self.template, req.query, passages, identifier_labels(self.scheme, len(passages)))

    def _payload(self, req: WindowRequest) -> dict[str, Any]:
        n = len(req.docids)
        # "[12] > " is ~5 tokens; leave room so a complete answer is never cut by the limit
        max_tokens = self.max_tokens or 8 * n + 32
        return {"model": self.model, "messages": self.messages(req), "temperature": 0, "max_tokens": max_tokens}

    def cache_key(self, req: WindowRequest) -> str:
        return stable_hash([self.kind, self.url, self._payload(req)])

    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self._stats)

    def _count(self, key: str, k: int = 1) -> None:
        with self._lock:
            self._stats[key] += k

    def _post(self, body: bytes) -> tuple[int, bytes, Any]:
        req = urllib.request.Request(self.url, data=body, headers=self._headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                return r.status, r.read(), r.headers
        except urllib.error.HTTPError as e:
            return e.code, e.read() if e.fp else b"", e.headers

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return min(float(retry_after), self.backoff_max_s)
            except ValueError:
                pass
        return min(self.backoff_s * 2 ** attempt, self.backoff_max_s) * (0.5 + random.random() / 2)

    def _call(self, req: WindowRequest) -> WindowResponse:
        """One window, retried until it answers or `max_retries` is spent (bounded loop)."""
        body = json.dumps(self._payload(req)).encode("utf-8")
        reason = "not attempted"
        for attempt in range(self.max_retries + 1):
            retry_after = None
            t0 = time.monotonic()
            try:
                status, data, headers = self._post(body)
            except (TimeoutError, socket.timeout):
                reason = "timeout"
            except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
                inner = getattr(e, "reason", e)
                reason = "timeout" if isinstance(inner, (TimeoutError, socket.timeout)) else "connection"
            else:
                if status == 200:
                    try:
                        out = json.loads(data)
                        msg = out["choices"][0]["message"]
                        text = msg["content"] if msg.get("content") is not None else ""  # refusal: an answer
                        if not isinstance(text, str):
                            raise TypeError("content is not a string")
                    except (ValueError, KeyError, IndexError, TypeError):
                        reason = "bad_response"
                    else:
                        self._count("teacher_calls")
                        usage = out.get("usage") or {}
                        self._count("prompt_tokens", int(usage.get("prompt_tokens") or 0))
                        self._count("completion_tokens", int(usage.get("completion_tokens") or 0))
                        return response_from_raw(text, len(req.docids), self.scheme, attempts=attempt + 1,
                                                 latency_s=round(time.monotonic() - t0, 3))
                elif status in _FATAL:
                    raise LrtError(f"{self.url}: HTTP {status} ({_FATAL[status]}); check teacher.base_url, "
                                   f"teacher.model and ${self.api_key_env or 'API key'}")
                elif status == 429 or status >= 500:
                    reason = f"http_{status}" if status == 429 else "http_5xx"
                    retry_after = headers.get("Retry-After") if headers else None
                else:  # another 4xx: this request itself is bad (e.g. too long); retrying cannot help
                    self._count("unanswered_calls")
                    return WindowResponse(None, None, error=f"HTTP {status}: {data[:200]!r}")
            self._count(f"retry_{reason}")
            if attempt < self.max_retries:
                time.sleep(self._delay(attempt, retry_after))
        self._count("unanswered_calls")
        return WindowResponse(None, None, error=f"no answer after {self.max_retries + 1} attempts (last: {reason})")

    def rank_windows(self, requests: Sequence[WindowRequest], on_response: OnResponse | None = None) -> list[WindowResponse]:
        out: list[WindowResponse | None] = [None] * len(requests)
        pool = ThreadPoolExecutor(max_workers=max(1, self.concurrency), thread_name_prefix="lrt-teacher")
        try:
            pending = {pool.submit(self._call, r): i for i, r in enumerate(requests)}
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    i = pending.pop(f)
                    out[i] = f.result()  # re-raises fatal errors (bad key, wrong URL)
                    if on_response is not None:  # in this thread: the cache connection is not shared
                        on_response(i, out[i])
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return out  # type: ignore[return-value]
