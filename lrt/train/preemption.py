"""Preemption of a training run: from the start of `fit` until the run is finished, SIGTERM and
SIGUSR1 only set a flag (lrt.train.checkpoint.Preemption). Each phase in flight (a step, an
evaluation, the end-of-run evaluation, the workflow's final export) finishes; then every rank stops
at the same point, the run checkpoints, leaves the PREEMPTED marker and exits 75 (requeue me)."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from lrt.errors import Preempted
from lrt.train import checkpoint as ckpt

log = logging.getLogger("lrt")


class PreemptionGuard:
    """One trainer's signal handlers and its collective stop."""

    def __init__(self, trainer: Any) -> None:
        self.t = trainer
        self.flag: ckpt.Preemption | None = None

    def install(self) -> None:
        self.flag = ckpt.ACTIVE_PREEMPTION = ckpt.Preemption().install()

    def requested(self) -> bool:
        """Collective: did any rank get SIGTERM/SIGUSR1 (every rank then stops at the same point)."""
        return self.t.env.any(self.flag is not None and self.flag.signal is not None)

    def late_signal(self) -> str | None:
        """The signal that arrived after the last check (while the run was finishing), if any."""
        return self.flag.signal if self.flag is not None else None

    def stop(self, checkpoint: bool = True) -> None:
        """SIGTERM/SIGUSR1 arrived: the phase in flight is finished; checkpoint, leave a marker, exit 75.
        Called while the handlers are still installed, so a second signal cannot kill the save."""
        t = self.t
        sig = (self.flag.signal if self.flag is not None else None) or "a signal on another rank"
        t.metrics.flush_steps()
        path: Path | None = None
        if checkpoint:
            path = t.save_checkpoint() if t.store.saved_step != t.step else ckpt.step_dir(t.ckpt_root, t.step)
        if t.env.is_main:
            (t.out / ckpt.PREEMPTED).write_text(json.dumps({"step": t.step, "signal": sig,
                                                            "checkpoint": str(path) if path else None}),
                                                encoding="utf-8")
        t.env.barrier()  # the marker exists before any rank exits (launchers read it)
        t.batches.close()
        self.restore()
        what = f"checkpoint {path} written" if path else "nothing trained yet, no checkpoint needed"
        raise Preempted(f"stopped by {sig} after step {t.step}: {what}; "
                        "resume with train.resume=auto (exit code 75 means: requeue me)")

    def stop_if_requested(self, checkpoint: bool = True) -> None:
        if self.requested():
            self.stop(checkpoint)

    def restore(self) -> None:
        """The previous signal handlers, back."""
        if self.flag is not None:
            self.flag.restore()
        ckpt.ACTIVE_PREEMPTION = None
