"""A loopback HTTP server that misbehaves on script: for the hostile-client tests of the OpenAI-compatible
client (redirects to another origin, malformed 200 answers, odd `Retry-After`, refusals).

`ScriptedServer(script)`: each request gets `script(n, method, path, body)` -> `(status, headers, body)`
(n counts requests from 1); every request's method, path, `Authorization` header and JSON body is
recorded in `seen`, so a test can tell whether a credential reached it or a POST became a GET.
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

Reply = tuple[int, dict[str, str], bytes]
Script = Callable[[int, str, str, Any], Reply]


class _Handler(BaseHTTPRequestHandler):
    server: "ScriptedServer"

    def log_message(self, *a: Any) -> None:  # quiet
        pass

    def _serve(self, method: str) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        srv = self.server
        with srv.lock:
            srv.seen.append({"method": method, "path": self.path, "auth": self.headers.get("Authorization"),
                             "body": body})
            k = len(srv.seen)
        status, headers, data = srv.script(k, method, self.path, body)
        for text, tid in srv.token_ids.items():  # answer identifiers by token id, as vLLM does
            data = data.replace(json.dumps(text).encode(), json.dumps(f"token_id:{tid}").encode())
        self.send_response(status)
        headers = {"Content-Type": "application/json", **headers}
        for key, v in headers.items():
            self.send_header(key, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        self._serve("POST")

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        self._serve("GET")


class ScriptedServer(ThreadingHTTPServer):
    """`with ScriptedServer(script) as srv: srv.url` -> "http://127.0.0.1:PORT/v1"."""

    daemon_threads = True

    def __init__(self, script: Script, token_ids: dict[str, int] | None = None) -> None:
        """`token_ids` ({"A": 330, ...}): every JSON string "A" in an answer becomes "token_id:330"
        (vLLM's `return_tokens_as_token_ids` form, which lrt's first-token scoring reads)."""
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script = script
        self.token_ids = dict(token_ids or {})
        self.lock = threading.Lock()
        self.seen: list[dict[str, Any]] = []
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def __enter__(self) -> "ScriptedServer":
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()
        self.server_close()


def completion(text: str = "A", top: dict[str, Any] | None = None, **extra: Any) -> bytes:
    """A legacy completions answer (`top`: its top_logprobs dict) with fields of `extra` merged in."""
    choice: dict[str, Any] = {"index": 0, "text": text, "finish_reason": "length",
                              "logprobs": {"tokens": [text], "token_logprobs": [-0.1],
                                           "top_logprobs": [top or {text: -0.1}], "text_offset": [0]}}
    out = {"id": "cmpl-x", "object": "text_completion", "choices": [choice],
           "usage": {"prompt_tokens": 3, "completion_tokens": 1}}
    out.update(extra)
    return json.dumps(out).encode("utf-8")


def chat(content: Any, **extra: Any) -> bytes:
    """A chat-completions answer whose message content is `content`."""
    out = {"id": "chat-x", "object": "chat.completion",
           "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
           "usage": {"prompt_tokens": 3, "completion_tokens": 1}}
    out.update(extra)
    return json.dumps(out).encode("utf-8")
