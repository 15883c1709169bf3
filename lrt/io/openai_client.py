"""One HTTP client for OpenAI-compatible endpoints (OpenAI, vLLM, SGLang, TGI): retries, concurrency, key.

Shared by the data-prep teacher (`lrt.prep.openai_teacher`, chat completions) and the reranker's
`openai` backend (`lrt.rerank.openai`, completions with top logprobs), so both retry, back off and
guard the API key the same way. Standard library only (urllib + threads): no SDK on a prep box.

- Requests run concurrently up to `concurrency` (`map`); 429, 5xx, timeouts, dropped connections
  and unparsable 200 answers are retried with exponential backoff and jitter, honouring
  `Retry-After`, at most `max_retries` times (a bounded loop: it never spins forever).
- 401/403/404 stop everything with one `LrtError`: retrying a wrong key or URL cannot help.
- Redirects are never followed: urllib would resend the `Authorization` header to another origin
  and turn a POST into a GET (whose answer would be taken as the completion). A 3xx stops with one
  `LrtError` naming where the server points, so the user sets that URL as the base URL.
- A 200 answer must be JSON with finite numbers (`Infinity`/`NaN` are refused), every logprob in it
  finite and <= 0, `usage` (if any) an object of non-negative counts, and `parse` must accept it;
  otherwise it is retried as `bad_response` and, when the retries are spent, reported with the reason.
- `Retry-After` is used only when it is a finite number of seconds >= 0 (or an HTTP date), capped at
  `backoff_max_s`; anything else (`-5`, `nan`, junk) falls back to the exponential backoff.
- The API key is read from the environment variable *named* by the caller and lives only in this
  object's request headers. Every message this client produces passes through `redact`, so a
  server that echoes the request (headers included) cannot leak the key into an error or a log.
"""
from __future__ import annotations

import email.utils
import http.client
import json
import math
import os
import random
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Callable, Generic, Sequence, TypeVar

from lrt.errors import LrtError

T = TypeVar("T")
R = TypeVar("R")
FATAL = {401: "authentication failed", 403: "permission denied", 404: "endpoint or model not found"}
REDACTED = "[REDACTED]"
# `Bearer <token>` in any spelling, and header echoes such as `"authorization": "<token>"` / `api-key: <token>`
_BEARER = re.compile(r"(?i)(bearer)(\s+|%20|\+)[^\s\"'<>,;&\\]+")
_AUTH_ECHO = re.compile(r"(?i)((?:authorization|api[-_]?key|x-api-key)[\"']?\s*[:=]\s*[\"']?)[^\s\"'<>,;&\\]+")


def redact(text: str, secrets: Sequence[str] = ()) -> str:
    """Remove API keys from text a server sent back (an echoed Authorization header, say).

    Every secret is cut out literally (also its URL-quoted and JSON-escaped forms), then any
    `Bearer <token>` and `authorization: <value>` left over, so even a key we do not know is never
    stored or printed.
    """
    for sec in secrets:
        if sec:
            for form in {sec, urllib.parse.quote(sec, safe=""), json.dumps(sec)[1:-1]}:
                text = text.replace(form, REDACTED)
    text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    return _AUTH_ECHO.sub(lambda m: m.group(1) + REDACTED, text)


def public_url(url: str) -> str:
    """The URL without `user:password@` (it goes into cards and messages)."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


class Redirected(Exception):
    """A 3xx answer to a POST; carries the status and where it points."""

    def __init__(self, code: int, location: str) -> None:
        super().__init__(f"HTTP {code} -> {location}")
        self.code, self.location = code, location


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse every redirect: following one would forward the key or turn the POST into a GET."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> None:
        raise Redirected(code, newurl)


class BadAnswer(ValueError):
    """A 200 answer whose content is unusable (non-finite or positive logprob, bad usage, ...)."""


def _no_constant(name: str) -> float:
    raise BadAnswer(f"the answer holds the non-JSON number {name}")


def check_logprob(x: Any, where: str = "logprob") -> float:
    """A log-probability as a float: finite and <= 0 (float rounding up to 1e-4 above 0 is read as 0)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x > 1e-4:
        raise BadAnswer(f"{where} is {x!r}: a log-probability must be a finite number <= 0")
    return min(float(x), 0.0)


def check_logprobs(obj: Any, where: str = "answer") -> None:
    """Every logprob of an answer (legacy `token_logprobs`/`top_logprobs` dicts, chat `logprob` fields)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in ("logprob", "token_logprobs") or (k == "top_logprobs" and isinstance(v, list)):
                vals = v if isinstance(v, list) else [v]
                for j, x in enumerate(vals):
                    if isinstance(x, dict) and k == "top_logprobs":
                        if "logprob" in x:
                            check_logprobs(x, f"{where}.{k}[{j}]")
                        else:  # legacy {token: logprob}
                            for t, y in x.items():
                                check_logprob(y, f"{where}.{k}[{j}][{t!r}]")
                    elif x is not None and not isinstance(x, (dict, list)):
                        check_logprob(x, f"{where}.{k}")
            elif isinstance(v, (dict, list)):
                check_logprobs(v, f"{where}.{k}")
    elif isinstance(obj, list):
        for j, x in enumerate(obj):
            check_logprobs(x, f"{where}[{j}]")


def _usage(out: Any) -> tuple[int, int]:
    """(prompt, completion) tokens of a valid `usage`; a malformed one makes the answer malformed."""
    u = out.get("usage") if isinstance(out, dict) else None
    if u is None:
        return 0, 0
    if not isinstance(u, dict):
        raise BadAnswer(f"usage is {type(u).__name__}, not an object")
    counts = []
    for k in ("prompt_tokens", "completion_tokens"):
        v = u.get(k) or 0
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise BadAnswer(f"usage.{k} is {v!r}, not a count")
        counts.append(v)
    return counts[0], counts[1]


def retry_after_s(value: str | None, cap: float) -> float | None:
    """Seconds to wait from a `Retry-After` header, or None when it is missing or unusable (negative,
    not finite, junk): a server value never reaches `time.sleep` unchecked."""
    if not value:
        return None
    try:
        s = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        s = when.timestamp() - time.time()
        s = max(0.0, s)
    if not math.isfinite(s) or s < 0:
        return None
    return min(s, cap)


@dataclass
class Answer(Generic[T]):
    """One request's outcome: `value` (what `parse` returned) or `error` (never both)."""

    value: T | None
    error: str | None
    attempts: int
    latency_s: float
    status: int | None = None  # the last HTTP status (None: no HTTP answer at all)


class OpenAIClient:
    """POST JSON to `base_url + route` with retries; `stats()` counts calls, tokens and retries."""

    def __init__(
        self, base_url: str, *, api_key_env: str | None = "OPENAI_API_KEY", concurrency: int = 8,
        timeout_s: float = 120.0, max_retries: int = 6, backoff_s: float = 1.0, backoff_max_s: float = 60.0,
        key_option: str = "api_key_env", url_option: str = "base_url", fix_hint: str = "check the base URL, the model name and the API key",
        calls_key: str = "calls",
    ) -> None:
        parts = urllib.parse.urlsplit(base_url) if isinstance(base_url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise LrtError(f"{url_option} {base_url!r} is not an http(s) URL; give the API root, e.g. "
                           "https://api.openai.com/v1 or http://localhost:8000/v1")
        self.base_url = base_url.rstrip("/")
        self.public_url = public_url(self.base_url)
        self.api_key_env = api_key_env
        self.concurrency = max(1, int(concurrency))
        self.timeout_s, self.max_retries = timeout_s, max_retries
        self.backoff_s, self.backoff_max_s = backoff_s, backoff_max_s
        self.fix_hint, self.calls_key = fix_hint, calls_key
        self._headers = {"Content-Type": "application/json"}
        self._key: str | None = None
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise LrtError(f"{key_option} names ${api_key_env}, which is not set; export it (the key is never "
                               f"written to any file or log) or unset {key_option} for a server without authentication")
            self._key = key
            self._headers["Authorization"] = f"Bearer {key}"
        self._lock = threading.Lock()
        self._stats: Counter = Counter()
        self._opener = urllib.request.build_opener(_NoRedirect)

    def __repr__(self) -> str:  # no headers: they hold the key
        return f"OpenAIClient(base_url={self.public_url!r})"

    def redact(self, text: str) -> str:
        """`text` without the API key or any echoed credential: for every message that may be shown."""
        return redact(text, [self._key] if self._key else [])

    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self._stats)

    def count(self, key: str, k: int = 1) -> None:
        with self._lock:
            self._stats[key] += k

    def _post(self, url: str, body: bytes) -> tuple[int, bytes, Any]:
        req = urllib.request.Request(url, data=body, headers=self._headers, method="POST")
        try:
            with self._opener.open(req, timeout=self.timeout_s) as r:
                return r.status, r.read(), r.headers
        except urllib.error.HTTPError as e:
            return e.code, e.read() if e.fp else b"", e.headers

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        wait_s = retry_after_s(retry_after, self.backoff_max_s)
        if wait_s is not None:
            return wait_s
        return min(self.backoff_s * 2 ** attempt, self.backoff_max_s) * (0.5 + random.random() / 2)

    def request(self, route: str, payload: dict[str, Any], parse: Callable[[dict[str, Any]], T]) -> Answer[T]:
        """POST `payload` to `route` until `parse(json)` succeeds or the retries are spent.

        `parse` raising ValueError/KeyError/IndexError/TypeError/AttributeError marks a malformed
        answer (retried, counted as `retry_bad_response`; the last reason is in the error). Another 4xx is returned as an error at once:
        the request itself is bad (e.g. too long) and retrying cannot help.
        """
        url = f"{self.base_url}/{route.lstrip('/')}"
        body = json.dumps(payload).encode("utf-8")
        reason, status = "not attempted", None
        t0 = time.monotonic()
        for attempt in range(self.max_retries + 1):
            retry_after = None
            try:
                status, data, headers = self._post(url, body)
            except Redirected as e:
                self.count("unanswered_calls")
                raise LrtError(self.redact(
                    f"{public_url(url)}: the server redirects this POST (HTTP {e.code}) to {public_url(e.location)}; "
                    "lrt never follows a redirect (it would send the API key to another server or turn the request "
                    f"into a GET): set the base URL to where it points. {self.fix_hint}")) from None
            except (TimeoutError, socket.timeout):
                reason, status = "timeout", None
            except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
                inner = getattr(e, "reason", e)
                reason = "timeout" if isinstance(inner, (TimeoutError, socket.timeout)) else "connection"
                status = None
            else:
                if status == 200:
                    try:
                        out = json.loads(data, parse_constant=_no_constant)
                        if not isinstance(out, dict):
                            raise BadAnswer(f"the answer is a JSON {type(out).__name__}, not an object")
                        check_logprobs(out.get("choices"), "choices")
                        n_prompt, n_completion = _usage(out)
                        value = parse(out)
                    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
                        why = str(e) if isinstance(e, BadAnswer) else f"{type(e).__name__}: {e}"
                        reason = "bad_response (" + self.redact(why)[:160] + ")"
                    else:
                        self.count(self.calls_key)
                        self.count("prompt_tokens", n_prompt)
                        self.count("completion_tokens", n_completion)
                        return Answer(value, None, attempt + 1, round(time.monotonic() - t0, 3), status)
                elif status in FATAL:
                    raise LrtError(self.redact(f"{public_url(url)}: HTTP {status} ({FATAL[status]}); {self.fix_hint}"
                                               f"{f' (${self.api_key_env})' if self.api_key_env else ''}"))
                elif status == 429 or status >= 500:
                    reason = f"http_{status}" if status == 429 else "http_5xx"
                    retry_after = headers.get("Retry-After") if headers else None
                else:
                    self.count("unanswered_calls")
                    # redact BEFORE cutting: a cut through the key would leave a piece no pattern finds
                    text = self.redact(data.decode("utf-8", errors="replace"))[:200]
                    return Answer(None, f"HTTP {status}: {text!r}", attempt + 1,
                                  round(time.monotonic() - t0, 3), status)
            self.count(f"retry_{reason.split(' ', 1)[0]}")
            if attempt < self.max_retries:
                time.sleep(self._delay(attempt, retry_after))
        self.count("unanswered_calls")
        return Answer(None, f"no answer after {self.max_retries + 1} attempts (last: {reason})", self.max_retries + 1,
                      round(time.monotonic() - t0, 3), status)

    def map(self, fn: Callable[[T], R], items: Sequence[T], on_result: Callable[[int, R], None] | None = None,
            thread_name: str = "lrt-openai") -> list[R]:
        """`[fn(x) for x in items]` on `concurrency` threads; `on_result(i, r)` runs in the calling
        thread as each finishes (so e.g. a SQLite cache connection is never shared). Exceptions
        (fatal HTTP statuses) propagate and cancel what has not started."""
        out: list[R | None] = [None] * len(items)
        if not items:
            return []
        pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(items)), thread_name_prefix=thread_name)
        try:
            pending = {pool.submit(fn, x): i for i, x in enumerate(items)}
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    i = pending.pop(f)
                    out[i] = f.result()
                    if on_result is not None:
                        on_result(i, out[i])  # type: ignore[arg-type]
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return out  # type: ignore[return-value]
