"""Atomic checkpoints with everything exact resume needs.

A checkpoint is written into `checkpoints/.tmp-step-N`, completed with `trainer_state.json`, then
renamed to `checkpoints/step-N`; the `latest` marker is replaced last. A crash at any point leaves
the previous checkpoint and marker untouched: only `step-*` directories holding a
`trainer_state.json` count as checkpoints, and `.tmp-*` leftovers are ignored (and removed).

Contents: `trainable.safetensors` (full model, or LoRA adapter + modules_to_save) with
`optimizer.pt` / `scheduler.pt`, or DeepSpeed's own `ds/` tag (fp32 master weights, optimizer
partitions and the client scheduler); `adapter/` for LoRA runs; `rng-rank{r}.pt` for every rank;
`recipe.yaml`; and the step (= data position, see StepSampler) in `trainer_state.json`.

`LRT_FAULT=ACTION:POINT:STEP` injects failures for the kill/resume tests (see `fault`).
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


def _write_durable(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def finalize(root: Path, step: int, state: dict[str, Any], keep_last: int, protect: tuple[str, ...] = ()) -> Path:
    """Rank 0, after every rank wrote its files into the tmp dir: state file, rename, marker, prune.

    `protect` names checkpoints pruning must keep (the best one under eval.select_best)."""
    tmp = tmp_dir(root, step)
    fault("in_save", step)  # test hook: every rank's files are written, the state file is not
    _write_durable(tmp / STATE, json.dumps(state, indent=2))
    final = step_dir(root, step)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _write_durable(root / ".latest.tmp", final.name)
    os.replace(root / ".latest.tmp", root / "latest")
    for old in complete_checkpoints(root)[:-keep_last]:
        if old.name not in protect:
            shutil.rmtree(old, ignore_errors=True)
    return final


def remove_stale_tmp(root: Path) -> None:
    """Leftovers of saves that crashed (never complete, never read)."""
    if root.exists():
        for p in root.glob(".tmp-step-*"):
            shutil.rmtree(p, ignore_errors=True)


def fault(point: str, step: int) -> None:
    """Failure injection for the kill/resume tests: `LRT_FAULT=ACTION:POINT:STEP` on rank 0, with
    ACTION `kill` (SIGKILL itself) or `pause` (sleep, for the test to SIGKILL the process group)
    and POINT `after_step` (step logged) or `in_save` (every rank's files are in the tmp dir,
    `trainer_state.json` is not: a half-written checkpoint)."""
    spec = os.environ.get("LRT_FAULT")
    if not spec or os.environ.get("RANK", "0") != "0":
        return
    action, p, at = (spec.split(":") + ["", "", ""])[:3]
    if p != point or not at.isdigit() or int(at) != step:
        return
    import signal
    import time

    print(f"LRT_FAULT: {action} at {point} of step {step}", flush=True)
    if action == "pause":  # bounded: a forgotten paused run dies on its own (and its peers then fail)
        time.sleep(float(os.environ.get("LRT_FAULT_PAUSE_S", "300")))
        action = "kill"
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)


def complete_checkpoints(root: Path) -> list[Path]:
    if not root.exists():
        return []
    return sorted(p for p in root.glob("step-*") if (p / STATE).exists())


def find_resume(root: Path, resume: str) -> Path | None:
    """`auto`: the newest complete checkpoint (a crash between the rename and the marker update
    leaves `latest` one behind, so the directories decide, not the marker); a path: that checkpoint."""
    if resume == "none":
        return None
    if resume != "auto":
        p = Path(resume)
        if not (p / STATE).exists():
            from lrt.errors import LrtError

            raise LrtError(f"train.resume: {p} is not a complete lrt checkpoint (no {STATE})")
        return p
    ckpts = complete_checkpoints(root)
    return ckpts[-1] if ckpts else None


def read_state(ckpt: Path) -> dict[str, Any]:
    return json.loads((ckpt / STATE).read_text(encoding="utf-8"))
