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
                 max_passage_tokens: int | None = None, trust_remote_code: bool = False,
                 first_token_scores: bool = False) -> None:
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
        self.first_token_scores = first_token_scores  # labels.teacher_scores: keep identifier log-probs
        self._id_ids: dict[int, list[int]] = {}

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
        key = [self.kind, self.name, prompt, self.new_tokens(len(req.docids)), needs_bos(self.tok, self.template, prompt)]
        # with scores the cached answer must carry them: a different key (jobs without keep their old keys)
        return stable_hash(key + ["first_token_scores"] if self.first_token_scores else key)

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
            scores = self._first_token_scores([prompts[i] for i in idx], [len(requests[i].docids) for i in idx]) \
                if self.first_token_scores else [None] * len(idx)
            for i, ids, sc in zip(idx, new, scores):
                n = len(requests[i].docids)  # cut to this row's own budget: same answer in any batch
                meta = {"scores": sc} if sc is not None else {}
                out[i] = response_from_raw(self._decode(ids[: self.new_tokens(n)]), n, self.scheme, **meta)
                self._calls += 1
                if on_response is not None:
                    on_response(i, out[i])
        self._memo.clear()
        return out  # type: ignore[return-value]

    def _first_token_scores(self, prompts: list[str], sizes: list[int]) -> list[list[float]]:
        """log p(identifier_i | prompt + "[") over the full vocabulary, for each window member i: what
        lrt's first-token reranker scores (`lrt.scoring.identifier_scores`, here normalised), read at the
        "[" that opens the answer. One forward per batch, left-padded with explicit positions."""
        from lrt.data.collate import identifier_token_ids

        torch = self.torch
        enc = encode_prompts_padded(self.tok, self.template, [p + "[" for p in prompts])
        mask = enc["attention_mask"]
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        with torch.inference_mode():
            logits = self.model(input_ids=enc["input_ids"].to(self.device), attention_mask=mask.to(self.device),
                                position_ids=pos.to(self.device), logits_to_keep=1).logits[:, -1].float()
        logp = torch.log_softmax(logits, dim=-1).cpu()
        out = []
        for row, n in zip(logp, sizes):
            if n not in self._id_ids:  # single-token identifiers in context, or a clear IdentifierError
                self._id_ids[n] = identifier_token_ids(self.tok, self.template, n)
            out.append([float(row[t]) for t in self._id_ids[n]])
        return out

