"""A loopback OpenAI-compatible completions server backed by a real (tiny) HF causal LM.

What vLLM/SGLang do for `POST /v1/completions`, reduced to what the reranker's `openai` backend
uses, computed with the model itself (no canned numbers): the prompt (text, tokenized without
special tokens like lrt's renderer, or token ids) is run through the model; with `max_tokens=1`
the answer carries the top-`logprobs` log-probabilities of the next token as the legacy
`{decoded token: logprob}` dict (collisions merged by max, as a dict must); otherwise the text of
a greedy decode up to EOS. `fail_first` answers that many requests with HTTP 503 first, so retry
paths run for real. Used by the tests and by `lrt bench rerank --backends hf,openai`.

Like vLLM 0.32: `return_tokens_as_token_ids` keys the dict `token_id:N` (no collisions), and
`logprob_token_ids: [ids]` returns the logprobs of exactly those ids (plus the sampled token) at
the first position. `token_ids=False` / `logprob_token_ids=False` give a server without them (the
fields are then ignored, as an OpenAI-compatible server ignores unknown fields); `max_logprobs`
answers HTTP 400 past that many logprobs or ids, as vLLM's `--max-logprobs` does. Each request's
`logprobs` value is recorded in `asked_logprobs`.
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch


class _Handler(BaseHTTPRequestHandler):
    server: "LogprobServer"

    def log_message(self, *a: Any) -> None:  # quiet
        pass

    def _send(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        srv = self.server
        req = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        with srv.lock:
            srv.requests += 1
            srv.auth.add(self.headers.get("Authorization") or "")
            fail = srv.requests <= srv.fail_first
        if fail:
            self._send(503, b'{"error": "warming up"}', {"Retry-After": "0"})
            return
        if not self.path.rstrip("/").endswith("/completions"):
            self._send(404, b'{"error": "not found"}')
            return
        n = len(req.get("logprob_token_ids") or []) if srv.logprob_token_ids else 0
        asked = max(n, int(req.get("logprobs") or 0))
        if srv.max_logprobs is not None and asked > srv.max_logprobs:  # vLLM's --max-logprobs check
            self._send(400, json.dumps({"error": {"message": f"Requested sample logprobs of {asked}, which is greater "
                                                  f"than max allowed: {srv.max_logprobs}"}}).encode("utf-8"))
            return
        self._send(200, json.dumps(srv.complete(req)).encode("utf-8"))


class LogprobServer(ThreadingHTTPServer):
    """`with LogprobServer(model, tokenizer) as srv: srv.url` -> "http://127.0.0.1:PORT/v1"."""

    daemon_threads = True

    def __init__(self, model: Any, tokenizer: Any, *, fail_first: int = 0, logprobs: bool = True,
                 token_ids: bool = True, logprob_token_ids: bool = True, max_logprobs: int | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.model, self.tok = model.eval(), tokenizer
        self.fail_first, self.with_logprobs = fail_first, logprobs
        self.token_ids, self.logprob_token_ids, self.max_logprobs = token_ids, logprob_token_ids, max_logprobs
        self.asked_logprobs: list[Any] = []
        self.lock = threading.Lock()
        self.requests = 0
        self.auth: set[str] = set()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def __enter__(self) -> "LogprobServer":
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()
        self.server_close()

    def complete(self, req: dict[str, Any]) -> dict[str, Any]:
        prompt = req["prompt"]
        ids = list(prompt) if isinstance(prompt, list) else self.tok(prompt, add_special_tokens=False)["input_ids"]
        max_tokens = int(req.get("max_tokens") or 16)
        k = req.get("logprobs")
        self.asked_logprobs.append(k)
        as_ids = self.token_ids and bool(req.get("return_tokens_as_token_ids"))
        wanted = req.get("logprob_token_ids") if self.logprob_token_ids else None
        x = torch.tensor([ids])
        with self.lock, torch.no_grad():  # one forward at a time: CPU threads are shared anyway
            if max_tokens == 1:
                logp = self.model(input_ids=x).logits[0, -1].float().log_softmax(-1)
                new = [int(logp.argmax())]
                choice: dict[str, Any] = {"text": self.tok.decode(new), "finish_reason": "length"}
                if k and self.with_logprobs:
                    if wanted:
                        chosen = [new[0], *[int(i) for i in wanted]]
                        pairs = [(float(logp[i]), i) for i in dict.fromkeys(chosen)]
                    else:
                        top = logp.topk(min(int(k), logp.shape[0]))
                        pairs = list(zip(top.values.tolist(), top.indices.tolist()))
                    d: dict[str, float] = {}
                    for v, i in pairs:
                        t = f"token_id:{i}" if as_ids else self.tok.decode([i])
                        d[t] = max(v, d.get(t, -float("inf")))
                    choice["logprobs"] = {"tokens": [choice["text"]], "token_logprobs": [float(logp[new[0]])],
                                          "top_logprobs": [d], "text_offset": [0]}
                else:
                    choice["logprobs"] = None
            else:
                eos = self.tok.eos_token_id
                gen = self.model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=max_tokens,
                                          do_sample=False, num_beams=1, pad_token_id=self.tok.pad_token_id or eos,
                                          eos_token_id=eos)
                new = gen[0, len(ids):].tolist()
                if eos is not None and eos in new:
                    new = new[: new.index(eos)]
                choice = {"text": self.tok.decode(new, skip_special_tokens=False), "logprobs": None,
                          "finish_reason": "stop"}
        choice["index"] = 0
        return {"id": "cmpl-lrt", "object": "text_completion", "model": req.get("model"), "choices": [choice],
                "usage": {"prompt_tokens": len(ids), "completion_tokens": len(new),
                          "total_tokens": len(ids) + len(new)}}
