"""A local causal LM teacher (transformers): greedy decoding, batched across queries.

The prompt is built by the shared `render_prompt` (so a model trained by lrt sees, as a teacher,
exactly its training prompt). Windows of one builder step come from different queries and are
independent, so they are generated together in length-sorted batches with left padding (decoder
models must end every row at the same position to continue it). Greedy decoding makes answers a
function of the prompt, which is what lets the cache replay them.
"""
from __future__ import annotations

from typing import Any, Sequence

from lrt.data.prompts import (PromptTemplate, encode_prompt, encode_prompts_padded, identifier_labels, needs_bos,
                              render_prompt, render_target)
from lrt.errors import LrtError
from lrt.prep.teachers import OnResponse, WindowRequest, WindowResponse, response_from_raw, stable_hash


class HFTeacher:
    kind = "hf"

    def __init__(self, *, model: str, template: PromptTemplate, tokenizer: str | None = None, batch_size: int = 8,
                 max_new_tokens: int | None = None, dtype: str = "auto", device: str = "cpu",
                 max_passage_tokens: int | None = None, trust_remote_code: bool = False) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            self.tok = AutoTokenizer.from_pretrained(tokenizer or model, trust_remote_code=trust_remote_code)
            torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
            self.model = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype,
                                                              trust_remote_code=trust_remote_code)
        except Exception as e:  # noqa: BLE001 - no files, a broken tokenizer/config/weights: the job's to fix
            msg = " ".join(str(e).split())[:300]
            raise LrtError(f"teacher.model {model!r}: cannot load ({type(e).__name__}: {msg}); give a local "
                           "directory with config, weights and tokenizer files, or a hub id that is cached "
                           "(HF_HUB_OFFLINE=1 forbids downloads)") from None
        self.model.to(device).eval()
        self.tok.padding_side = "left"
        if self.tok.pad_token is None:
            if self.tok.eos_token is None:
                raise LrtError(f"tokenizer of {model!r} has neither a pad nor an eos token; set one")
            self.tok.pad_token = self.tok.eos_token
        self.torch = torch
        self.name = model
        self.template = template
        self.scheme = template.identifiers
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.max_passage_tokens = max_passage_tokens
        self.device = device
        self._stop = {i for i in (self.tok.eos_token_id, self.tok.pad_token_id) if i is not None}
        self._budget: dict[int, int] = {}
        self._memo: dict[WindowRequest, str] = {}
        self._calls = 0

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": self.name, "decoding": "greedy", "identifiers": self.scheme,
                "max_passage_tokens": self.max_passage_tokens or self.template.max_passage_tokens}

    def prompt(self, req: WindowRequest) -> str:
        """Rendered once per request: the cache key and the generation both need it."""
        if req not in self._memo:
            self._memo[req] = render_prompt(self.tok, self.template, req.query, list(req.passages),
                                            self.max_passage_tokens)
        return self._memo[req]

    def new_tokens(self, n: int) -> int:
        """Enough tokens for a complete `[A] > ... ` answer over n ids (+ slack), unless configured."""
        if self.max_new_tokens:
            return self.max_new_tokens
        if n not in self._budget:
            text, _ = render_target(identifier_labels(self.scheme, n))
            self._budget[n] = len(self.tok(text, add_special_tokens=False)["input_ids"]) + 8
        return self._budget[n]

    def cache_key(self, req: WindowRequest) -> str:
        prompt = self.prompt(req)  # BOS is added as a token, not text: it is part of the key too
        return stable_hash([self.kind, self.name, prompt, self.new_tokens(len(req.docids)),
                            needs_bos(self.tok, self.template, prompt)])

    def stats(self) -> dict[str, int]:
        return {"teacher_calls": self._calls}

    def _decode(self, ids: list[int]) -> str:
        for k, t in enumerate(ids):  # generation pads finished rows; cut at the first stop token
            if t in self._stop:
                ids = ids[:k]
                break
        return self.tok.decode(ids, skip_special_tokens=False)

    def rank_windows(self, requests: Sequence[WindowRequest], on_response: OnResponse | None = None) -> list[WindowResponse]:
        prompts = [self.prompt(r) for r in requests]
        lengths = [len(encode_prompt(self.tok, self.template, p)["input_ids"]) for p in prompts]
        by_len = sorted(range(len(requests)), key=lengths.__getitem__)  # less padding per batch
        out: list[WindowResponse | None] = [None] * len(requests)
        for s in range(0, len(by_len), self.batch_size):
            idx = by_len[s:s + self.batch_size]
            # the shared encoder: BOS exactly as in training and reranking (policy `prompt.bos`)
            enc = encode_prompts_padded(self.tok, self.template, [prompts[i] for i in idx])
            enc = {k: v.to(self.device) for k, v in enc.items()}
            budget = max(self.new_tokens(len(requests[i].docids)) for i in idx)
            with self.torch.inference_mode():
                gen = self.model.generate(**enc, do_sample=False, max_new_tokens=budget,
                                          pad_token_id=self.tok.pad_token_id)
            new = gen[:, enc["input_ids"].shape[1]:].tolist()
            for i, ids in zip(idx, new):
                n = len(requests[i].docids)  # cut to this row's own budget: same answer in any batch
                out[i] = response_from_raw(self._decode(ids[: self.new_tokens(n)]), n, self.scheme)
                self._calls += 1
                if on_response is not None:
                    on_response(i, out[i])
        self._memo.clear()
        return out  # type: ignore[return-value]

