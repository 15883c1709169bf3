"""Metrics to a local JSONL file (always) and wandb (opt-in, offline-safe, never blocking)."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from lrt.config import Recipe

log = logging.getLogger("lrt")


class _NoBar:
    def update(self, n: int = 1) -> None: ...
    def set_postfix(self, **kw: Any) -> None: ...
    def close(self) -> None: ...


class MetricsLogger:
    def __init__(self, out_dir: Path, recipe: Recipe, enabled: bool) -> None:
        self.enabled = enabled
        self.recipe = recipe
        self.path = out_dir / "metrics.jsonl"
        self.wandb = None
        if not enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        mode = recipe.log.wandb
        if mode != "disabled":
            self.wandb = _start_wandb(recipe, out_dir, mode)

    def log(self, rec: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec) + "\n")
        if self.wandb is not None:
            try:
                self.wandb.log({k: v for k, v in rec.items() if isinstance(v, (int, float))}, step=rec.get("step"))
            except Exception as e:  # noqa: BLE001 - logging must never stop training
                log.warning("wandb logging failed (%s); continuing with metrics.jsonl only", e)
                self.wandb = None

    def progress(self, total: int, initial: int = 0) -> Any:
        if not (self.enabled and self.recipe.log.progress):
            return _NoBar()
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc="train", dynamic_ncols=True)

    def close(self) -> None:
        if self.wandb is not None:
            try:
                self.wandb.finish()
            except Exception:  # noqa: BLE001
                pass


def _start_wandb(recipe: Recipe, out_dir: Path, mode: str) -> Any:
    """`online` without network would hang ~100 s: lrt caps the init timeout and falls back to
    metrics.jsonl with a warning instead of failing the run."""
    try:
        import wandb

        os.environ.setdefault("WANDB_INIT_TIMEOUT", "20")
        return wandb.init(
            project=recipe.log.project, name=recipe.log.run_name, dir=str(out_dir), mode=mode,
            config=recipe.model_dump(mode="json"), settings=wandb.Settings(init_timeout=20, silent=True),
        )
    except Exception as e:  # noqa: BLE001
        log.warning("wandb %s init failed (%s): logging to metrics.jsonl only", mode, e)
        return None
