"""Atomic checkpoints with everything exact resume needs.

A checkpoint is written into `checkpoints/.tmp-step-N`, completed with `trainer_state.json`, then
renamed to `checkpoints/step-N`; the `latest` marker is replaced last. A crash at any point leaves
the previous checkpoint and marker untouched.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE = "trainer_state.json"


def rng_state() -> dict[str, Any]:
    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:07d}"


def tmp_dir(root: Path, step: int) -> Path:
    return root / f".tmp-step-{step:07d}"


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Only trainable tensors (full model, or LoRA adapter + modules_to_save): exact and small."""
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in state]
    unknown = [n for n in state if n not in params]
    if missing or unknown:
        raise RuntimeError(f"checkpoint does not match the model: missing {missing[:3]}, unknown {unknown[:3]}")
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t.to(params[n].dtype))


def finalize(root: Path, step: int, state: dict[str, Any], keep_last: int) -> Path:
    """Rank 0, after every rank wrote its files into the tmp dir: state file, rename, marker."""
    tmp = tmp_dir(root, step)
    (tmp / STATE).write_text(json.dumps(state, indent=2), encoding="utf-8")
    final = step_dir(root, step)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    marker_tmp = root / ".latest.tmp"
    marker_tmp.write_text(final.name, encoding="utf-8")
    os.replace(marker_tmp, root / "latest")
    for old in complete_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def complete_checkpoints(root: Path) -> list[Path]:
    if not root.exists():
        return []
    return sorted(p for p in root.glob("step-*") if (p / STATE).exists())


def find_resume(root: Path, resume: str) -> Path | None:
    """`auto`: the newest complete checkpoint (the marker if valid); a path: that checkpoint."""
    if resume == "none":
        return None
    if resume != "auto":
        p = Path(resume)
        if not (p / STATE).exists():
            raise FileNotFoundError(f"{p} is not a complete lrt checkpoint (no {STATE})")
        return p
    marker = root / "latest"
    if marker.exists():
        p = root / marker.read_text(encoding="utf-8").strip()
        if (p / STATE).exists():
            return p
    ckpts = complete_checkpoints(root)
    return ckpts[-1] if ckpts else None


def read_state(ckpt: Path) -> dict[str, Any]:
    return json.loads((ckpt / STATE).read_text(encoding="utf-8"))
