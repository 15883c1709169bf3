"""Saving a LoRA adapter from an explicit (gathered) state dict: used by checkpoint saves and by export."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def save_adapter(peft_model: nn.Module, state: dict[str, torch.Tensor] | None, out: Path) -> Path:
    """PEFT adapter dir from an explicit (gathered) state dict. Under ZeRO-3 the live LoRA tensors
    are empty partitions, so `save_pretrained()` without a state dict writes an empty adapter: the
    well-known silent failure this guards against (and checks)."""
    from safetensors import safe_open

    peft_model.save_pretrained(str(out), state_dict=state, safe_serialization=True, save_embedding_layers=False)
    f = out / "adapter_model.safetensors"
    with safe_open(str(f), "pt") as fh:
        sizes = [fh.get_slice(k).get_shape() for k in fh.keys()]
    if not sizes or any(0 in s or not s for s in sizes):
        raise RuntimeError(f"{f}: empty LoRA adapter written ({len(sizes)} tensors, shapes {sizes[:3]})")
    return out
