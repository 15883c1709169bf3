"""DeepSpeed specifics kept out of the loop: the config lrt hands to `deepspeed.initialize`, the
ZeRO-3 loading context, and gathering trainable tensors onto rank 0.

Why lrt fills the JSON itself: batch sizes, clipping and precision must come from the recipe (one
source of truth), and `"auto"` values are an HF-Trainer convention DeepSpeed itself rejects.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from lrt.config import Recipe, resolve_path
from lrt.errors import LrtError


def deepspeed_config(r: Recipe, on_gpu: bool | None = None) -> dict[str, Any]:
    """The recipe's DeepSpeed JSON with batch sizes, clipping and precision filled from the recipe."""
    on_gpu = torch.cuda.is_available() if on_gpu is None else on_gpu
    src = resolve_path(r.train.deepspeed or "")
    try:
        cfg = json.loads(Path(src).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise LrtError(f"train.deepspeed: cannot read {src!r} ({e})") from None
    cfg["train_micro_batch_size_per_gpu"] = r.train.per_device_batch_size
    cfg["gradient_accumulation_steps"] = r.train.grad_accum
    cfg.pop("train_batch_size", None)  # derived by DeepSpeed from micro x accumulation x world
    if r.train.max_grad_norm:
        cfg["gradient_clipping"] = r.train.max_grad_norm
    else:
        cfg.pop("gradient_clipping", None)
    cfg["bf16"] = {"enabled": r.train.precision == "bf16"}
    cfg.pop("fp16", None)
    cfg.pop("optimizer", None)  # lrt passes its own AdamW and LambdaLR: identical to the non-DS path
    cfg.pop("scheduler", None)
    cfg.setdefault("steps_per_print", 10**9)
    zo = cfg.setdefault("zero_optimization", {})
    for key in ("offload_optimizer", "offload_param"):
        if isinstance(zo.get(key), dict) and not on_gpu:
            zo[key]["pin_memory"] = False  # pinned host memory needs a CUDA driver
    if offloads_optimizer(cfg) and not on_gpu:
        # on CPU lrt keeps torch AdamW (DeepSpeedCPUAdam compiles ~50 s / 2 GB on first use)
        cfg["zero_force_ds_cpu_optimizer"] = False
    autos = sorted(_auto_keys(cfg))
    if autos:
        raise LrtError(f"train.deepspeed {src}: lrt cannot fill 'auto' for {autos}; set explicit values")
    return cfg


def zero_stage(cfg: dict[str, Any] | None) -> int:
    return int((cfg or {}).get("zero_optimization", {}).get("stage", 0))


def offloads_optimizer(cfg: dict[str, Any]) -> bool:
    off = cfg.get("zero_optimization", {}).get("offload_optimizer") or {}
    return off.get("device", "none") in ("cpu", "nvme")


def _auto_keys(d: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(d, dict):
        for k, v in d.items():
            yield from _auto_keys(v, f"{prefix}{k}.")
    elif d == "auto":
        yield prefix.rstrip(".")


@contextlib.contextmanager
def hf_zero3_suspended() -> Iterator[None]:
    """Temporarily hide the global HfDeepSpeedConfig, so a rank-0-only `from_pretrained` (export)
    loads a plain CPU model instead of entering `zero.Init`, which would wait for the other ranks."""
    try:
        from transformers.integrations import deepspeed as hf_ds
    except ImportError:
        yield
        return
    ref = getattr(hf_ds, "_hf_deepspeed_config_weak_ref", None)
    hf_ds._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_ds._hf_deepspeed_config_weak_ref = ref


def is_partitioned(model: nn.Module) -> bool:
    """True when the weights are ZeRO-3 partitions (loaded under HfDeepSpeedConfig / zero.Init)."""
    return any(hasattr(p, "ds_id") for p in model.parameters())


def gather_on_rank0(model: nn.Module, is_main: bool, only_trainable: bool = True) -> dict[str, torch.Tensor] | None:
    """CPU copies of the (trainable) parameters on rank 0; every rank must call this (under ZeRO-3
    each tensor is all-gathered collectively, one at a time, so peak memory is one tensor)."""
    from lrt.objective.module import gathered

    out: dict[str, torch.Tensor] = {}
    for name, p in model.named_parameters():
        if only_trainable and not p.requires_grad:
            continue
        with gathered([p]):
            if is_main:
                out[name] = p.detach().to("cpu", copy=True).contiguous()
    return out if is_main else None
