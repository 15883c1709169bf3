"""Loading an exported model for `lrt rerank`: the device and dtype checks, the weights and the
tokenizer, each failing with one clear error before any reranking."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lrt.errors import LrtError
from lrt.ranking.meta import load_export_tokenizer

DTYPES = ("float32", "bfloat16", "float16")


def check_device(device: str | None) -> str:
    """The device to load on, or one clear error before any loading (e.g. --device cuda without CUDA)."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError):
        raise LrtError(f"--device {device!r} is not a device; give cpu, cuda or cuda:N") from None
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise LrtError(f"--device {device}: CUDA is not available here (torch {torch.__version__}, built for CUDA "
                           f"{torch.version.cuda or 'none'}); use --device cpu or run on a GPU machine")
        if d.index is not None and d.index >= torch.cuda.device_count():
            raise LrtError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) visible; "
                           f"use cuda:0..cuda:{torch.cuda.device_count() - 1}")
    elif d.type not in ("cpu", "cuda", "mps"):
        raise LrtError(f"--device {device!r}: unsupported device type {d.type!r}; give cpu or cuda[:N]")
    elif d.type == "mps" and not torch.backends.mps.is_available():
        raise LrtError(f"--device {device}: MPS is not available here; use --device cpu")
    return str(d)


def check_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise LrtError(f"dtype must be float32, bfloat16 or float16 (got {dtype!r})")
        dtype = getattr(torch, dtype)
    return dtype  # type: ignore[return-value]


def load_export_model(path: str | Path, *, device: str | None, dtype: torch.dtype | str) -> tuple[Any, Any]:
    """(model on `device` in eval mode, tokenizer) of an export; user-fixable problems are one error."""
    from transformers import AutoModelForCausalLM

    dtype = check_dtype(dtype)
    device = check_device(device)
    tok = load_export_tokenizer(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    except Exception as e:  # noqa: BLE001 - corrupt/partial weights: a user-fixable export problem
        raise LrtError(f"{path}: cannot load the model weights ({str(e).splitlines()[0][:200]}); give a complete "
                       "export (`lrt export RUN_DIR --out DIR`)") from None
    model.to(device).eval()
    return model, tok
