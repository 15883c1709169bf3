"""Helpers shared by the scale tests (LoRA, export, launch, multi-process, kill/resume)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def windows(examples, n: int = 3) -> list[tuple[str, Any]]:
    return [(e.query, e.candidates) for e in examples[:n]]


def scores(model, trainer, items) -> list[torch.Tensor]:
    """First-token scores through the production path (`Reranker.score_windows`)."""
    from lrt.rerank import Reranker

    rr = Reranker(model, trainer.tok, trainer.template, window=5, stride=5, max_length=512, batch_size=4)
    return rr.score_windows(items)


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def subprocess_env(**extra: str) -> dict[str, str]:
    """Offline, CPU DeepSpeed, the shm-comm op cached across tests (it builds once per machine)."""
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled",
                "DS_ACCELERATOR": "cpu", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
                "PYTHONPATH": str(REPO), "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"})
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions"))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LRT_FAULT"):
        env.pop(k, None)
    env.update(extra)
    return env


def run(cmd: list[str], timeout: float = 900, **env: str) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, cwd=REPO, env=subprocess_env(**env), capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise AssertionError(f"{cmd} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}")
    return p


def run_until_fault(cmd: list[str], fault: str, marker: Path | None = None, timeout: float = 900, **env: str) -> str:
    """Start `cmd` with LRT_FAULT=fault ("pause:POINT:STEP"), wait until rank 0 reports the pause,
    then SIGKILL the launcher and every rank, like a node dying."""
    p = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(LRT_FAULT=fault, **env), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
    out: list[str] = []
    deadline = time.monotonic() + timeout
    try:
        assert p.stdout is not None
        for line in p.stdout:
            out.append(line)
            if line.startswith("LRT_FAULT:"):
                break
            if time.monotonic() > deadline:
                raise AssertionError("timed out before the fault point:\n" + "".join(out[-50:]))
        else:
            raise AssertionError(f"exited ({p.wait()}) before the fault point:\n" + "".join(out[-80:]))
    finally:
        kill_tree(p.pid)
        p.wait()
    return "".join(out)


def signal_at_fault(cmd: list[str], fault: str, sig: int, timeout: float = 600, **env: str) -> tuple[int, str]:
    """Start `cmd` with LRT_FAULT=fault ("pause:POINT:STEP"), send `sig` to the launched process
    (only it, like Slurm signalling its task) once rank 0 reports the pause, and wait for the exit."""
    p = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(LRT_FAULT=fault, **env), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
    out: list[str] = []
    try:
        assert p.stdout is not None
        for line in p.stdout:
            out.append(line)
            if line.startswith("LRT_FAULT:"):
                os.kill(p.pid, sig)
                break
        else:
            raise AssertionError(f"exited ({p.wait()}) before the fault point:\n" + "".join(out[-80:]))
        out.append(p.communicate(timeout=timeout)[0])
    finally:
        if p.poll() is None:
            kill_tree(p.pid)
            p.wait()
    return p.returncode, "".join(out)


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc). torchrun starts its workers in new sessions, so
    killing the launcher's process group alone would leave the ranks running."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def kill_tree(pid: int) -> None:
    """SIGKILL `pid` and all its descendants at once, like a node dying; wait until they are gone."""
    tree = [pid, *descendants(pid)]
    for q in tree:
        try:
            os.kill(q, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(q) for q in tree[1:]):
        time.sleep(0.1)
    assert not any(_alive(q) for q in tree[1:]), "ranks survived the kill"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def metrics(run_dir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl training records; after a resume the re-run steps appear twice (in order)."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "loss" in r]


def last_per_step(recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by: dict[int, dict[str, Any]] = {}
    for r in recs:
        by[r["step"]] = r
    return [by[s] for s in sorted(by)]


def safetensors_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))
