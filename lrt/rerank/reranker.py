"""`Reranker` / `PointwiseReranker`: the ranking engine (`lrt.ranking`) loaded from an export.

`Reranker.from_pretrained(DIR)` reads `lrt_reranker.json` (template, identifiers, window, stride,
max_length) and reranks exactly as the model was trained, in-process; `Reranker.from_openai` sends
the same windows to an OpenAI-compatible server (`lrt.rerank.openai`). A pointwise export loads as
a `PointwiseReranker`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lrt.data.pointwise import PointwiseTemplate
from lrt.data.prompts import PromptTemplate
from lrt.errors import LrtError
import lrt.families as families
from lrt.families import Family
from lrt.ranking import META_FILE, ListwiseRanker, Mode, PairRanker, RerankerMeta, load_export_tokenizer
from lrt.rerank.load import load_export_model


def family_of(meta: RerankerMeta, path: str | Path) -> Family:
    """The scoring family of an export, or one error naming its lrt_reranker.json."""
    try:
        return families.of_meta(meta)
    except LrtError as e:
        raise LrtError(f"{path}/{META_FILE}: {e}; re-export the model with `lrt export`") from None


def _overrides(meta: RerankerMeta, mode: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The export's window settings, then every given (not None) override."""
    kw: dict[str, Any] = dict(window=meta.window, stride=meta.stride, max_length=meta.max_length, mode=mode)
    kw.update({k: v for k, v in overrides.items() if v is not None})
    return kw


class Reranker(ListwiseRanker):
    """A `ListwiseRanker` that loads exports (see `lrt.ranking.listwise` for modes and the score rule)."""

    @classmethod
    def from_pretrained(
        cls, path: str | Path, *, device: str | None = None, dtype: torch.dtype | str = torch.float32,
        mode: Mode | None = None, **overrides: Any,
    ) -> "Reranker":
        """Load an exported model and its `lrt_reranker.json` (template, identifiers, window,
        stride, max_length); keyword `overrides` (window=, stride=, batch_size=, ...) win. `mode`
        None: the export's own (pointwise for a pointwise model, which returns a PointwiseReranker),
        else first_token."""
        if not Path(path).is_dir():
            raise LrtError(f"{path}: not a directory; give an exported model (`lrt export` / RUN_DIR/final)")
        meta = RerankerMeta.load(path)
        fam = family_of(meta, path)
        mode = mode or fam.default_rerank_mode  # type: ignore[assignment]
        if families.of_rerank_mode(mode) is not fam:  # an unknown mode is one error there
            raise LrtError(f"{path}: a {meta.mode} model (lrt_reranker.json) cannot rerank in mode {mode}: use "
                           + (f"--mode {fam.rerank_modes[0]}" if len(fam.rerank_modes) == 1
                              else f"{', '.join(fam.rerank_modes[:-1])} or {fam.rerank_modes[-1]}"))
        if fam.pairs:
            return PointwiseReranker.from_pretrained(path, device=device, dtype=dtype, **overrides)  # type: ignore[return-value]
        try:
            template = PromptTemplate.from_dict(meta.template)
        except TypeError as e:
            raise LrtError(f"{path}/{META_FILE}: bad prompt template ({e}); re-export the model") from None
        model, tok = load_export_model(path, device=device, dtype=dtype)
        return cls(model, tok, template, **_overrides(meta, mode, overrides))  # type: ignore[arg-type]

    @classmethod
    def from_openai(
        cls, base_url: str, model: str, export: str | Path, *, mode: Mode = "first_token",
        api_key_env: str | None = None, concurrency: int = 8, logprobs: int | None = None,
        prompt_format: str = "text", timeout_s: float = 120.0, max_retries: int = 6, backoff_s: float = 1.0,
        **overrides: Any,
    ) -> "Reranker":
        """Rerank through an OpenAI-compatible completions endpoint (vLLM, SGLang) serving `model`.

        `export` is the exported model directory (or any directory with its tokenizer and
        `lrt_reranker.json`): lrt renders the prompt itself, with the model's own template, so the
        server sees exactly the prompt the model was trained on. Identifier logprobs are asked by
        token id (vLLM's `logprob_token_ids`, probed once); `logprobs` is the top-k asked for by a
        server without it (default 20); `prompt_format` "text" sends the rendered prompt, "tokens" its token
        ids (exact even where a server would add a BOS). See `lrt.rerank.openai`."""
        from lrt.io.openai_client import OpenAIClient
        from lrt.rerank.openai import OpenAIBackend

        if not Path(export).is_dir():
            raise LrtError(f"{export}: not a directory; the openai backend needs the exported model directory "
                           "(--export DIR) for its tokenizer and lrt_reranker.json")
        meta = RerankerMeta.load(export)
        if families.of_rerank_mode(mode).pairs or family_of(meta, export).pairs:
            raise LrtError("the openai backend does not serve pointwise models: serve the sequence-classifier export "
                           "(`lrt export --to-seq-cls`) through vLLM's score API, or rerank with --backend hf")
        try:
            template = PromptTemplate.from_dict(meta.template)
        except TypeError as e:
            raise LrtError(f"{export}/{META_FILE}: bad prompt template ({e}); re-export the model") from None
        tok = load_export_tokenizer(export)
        client = OpenAIClient(base_url, api_key_env=api_key_env, concurrency=concurrency, timeout_s=timeout_s,
                              max_retries=max_retries, backoff_s=backoff_s, key_option="--api-key-env",
                              url_option="--base-url", fix_hint="check --base-url, --model and --api-key-env")
        backend = OpenAIBackend(client, model, tok, logprobs=logprobs, prompt_format=prompt_format)
        return cls(None, tok, template, backend=backend, **_overrides(meta, mode, overrides))  # type: ignore[arg-type]


class PointwiseReranker(PairRanker):
    """A `PairRanker` that loads pointwise exports."""

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str | None = None, dtype: torch.dtype | str = torch.float32,
                        **overrides: Any) -> "PointwiseReranker":
        meta = RerankerMeta.load(path)
        if not family_of(meta, path).pairs:
            raise LrtError(f"{path}: a {meta.mode} model (lrt_reranker.json); --mode pointwise needs a pointwise export")
        try:
            template = PointwiseTemplate.from_dict(meta.template)
        except TypeError as e:
            raise LrtError(f"{path}/{META_FILE}: bad pointwise template ({e}); re-export the model") from None
        model, tok = load_export_model(path, device=device, dtype=dtype)
        kw: dict[str, Any] = {"max_length": meta.max_length}
        kw.update({k: v for k, v in overrides.items() if v is not None and k in ("max_length", "batch_size")})
        return cls(model, tok, template, **kw)
