"""Metrics: a local JSONL file (always) and the trackers named in `log.report_to`.

Trackers are wandb, TensorBoard (`<run>/tensorboard`), trackio (local SQLite, `TRACKIO_DIR`) and
MLflow (`MLFLOW_TRACKING_URI`, else a file store in `<run>/mlruns`). The environment wins over the
recipe: `LRT_REPORT_TO` ("none" or a comma list) replaces `log.report_to`, and `WANDB_MODE` /
`WANDB_DISABLED` override `log.wandb`. No tracker may stop or stall training: an online tracker
whose host does not answer within 3 s falls back to offline (wandb) or is dropped, and any error
while logging disables that tracker with one warning while metrics.jsonl carries on.

Training records are interval means: `log()` of every `log.every` steps writes the mean of the
loss terms and grad norm over the steps since the last write (not one sampled step).
"""
from __future__ import annotations

import contextlib
import json
import math
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lrt.config import Recipe
from lrt.errors import ConfigError
from lrt.progress import Progress

log = logging.getLogger("lrt")

TRACKERS = ("wandb", "tensorboard", "trackio", "mlflow")
_FALSE = {"", "0", "false", "no", "off"}


def resolve_trackers(recipe: Recipe, environ: Any = None) -> dict[str, str]:
    """{tracker: mode} after the environment has had its say. wandb's mode is online|offline."""
    env = os.environ if environ is None else environ
    names = list(recipe.log.report_to)
    if recipe.log.wandb != "disabled" and "wandb" not in names:
        names.append("wandb")
    if "LRT_REPORT_TO" in env:
        raw = env["LRT_REPORT_TO"].strip()
        names = [] if raw.lower() in ("none", "") else [n.strip() for n in raw.split(",") if n.strip()]
        bad = [n for n in names if n not in TRACKERS]
        if bad:
            raise ConfigError([f"LRT_REPORT_TO={raw!r}: unknown tracker(s) {bad}; choose from {', '.join(TRACKERS)} "
                               "or none"], source="environment")
    out: dict[str, str] = {}
    for n in dict.fromkeys(names):
        if n == "wandb":
            mode = env.get("WANDB_MODE") or (recipe.log.wandb if recipe.log.wandb != "disabled" else "offline")
            if mode in ("disabled", "dryrun") or env.get("WANDB_DISABLED", "").lower() not in _FALSE:
                continue
            out[n] = "online" if mode == "run" else mode
        else:
            out[n] = "local"
    return out


def reachable(url: str, timeout: float = 3.0) -> bool:
    """Can a TCP connection to the URL's host be opened within `timeout`? (no request is sent)"""
    u = urlparse(url)
    if not u.hostname:
        return False
    port = u.port or (443 if u.scheme == "https" else 80)
    try:
        with socket.create_connection((u.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def _numeric(rec: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a record (a diverged step's NaN goes to metrics.jsonl as null, not to trackers)."""
    return {k: float(v) for k, v in rec.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step" and math.isfinite(v)}


class Tracker:
    name = "tracker"

    def log(self, values: dict[str, float], step: int | None) -> None: ...

    def close(self) -> None: ...


class WandbTracker(Tracker):
    name = "wandb"

    def __init__(self, recipe: Recipe, out_dir: Path, mode: str) -> None:
        import wandb

        if mode == "online":
            host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
            if not reachable(host):
                # wandb online without network blocks ~100 s in init, then fails: go offline instead
                log.warning("wandb: %s unreachable; logging offline (sync later with `wandb sync %s/wandb`)", host, out_dir)
                mode = "offline"
        os.environ.setdefault("WANDB_INIT_TIMEOUT", "20")
        self.mode = mode
        self.run = wandb.init(
            project=recipe.log.project, name=recipe.log.run_name, dir=str(out_dir), mode=mode,
            config=recipe.model_dump(mode="json"), settings=wandb.Settings(init_timeout=20, silent=True),
        )

    def log(self, values: dict[str, float], step: int | None) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


class TensorBoardTracker(Tracker):
    name = "tensorboard"

    def __init__(self, recipe: Recipe, out_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.dir = out_dir / "tensorboard"
        self.w = SummaryWriter(log_dir=str(self.dir))
        self.w.add_text("recipe", "```\n" + json.dumps(recipe.model_dump(mode="json"), indent=1) + "\n```", 0)

    def log(self, values: dict[str, float], step: int | None) -> None:
        for k, v in values.items():
            self.w.add_scalar(k, v, global_step=step)
        self.w.flush()

    def close(self) -> None:
        self.w.close()


class TrackioTracker(Tracker):
    """trackio (Hugging Face): local SQLite under TRACKIO_DIR; no Space unless TRACKIO_SPACE_ID is set."""

    name = "trackio"

    def __init__(self, recipe: Recipe, out_dir: Path) -> None:
        import trackio

        space = os.environ.get("TRACKIO_SPACE_ID")
        if space and not reachable("https://huggingface.co"):
            log.warning("trackio: huggingface.co unreachable; logging locally only (not to Space %s)", space)
            space = None
        with contextlib.redirect_stdout(sys.stderr):  # trackio prints its banner to stdout
            self.run = trackio.init(project=recipe.log.project, name=recipe.log.run_name or out_dir.name,
                                    config=recipe.model_dump(mode="json"), space_id=space,
                                    auto_log_cpu=False, auto_log_gpu=False)

    def log(self, values: dict[str, float], step: int | None) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        with contextlib.redirect_stdout(sys.stderr):
            self.run.finish()


class MlflowTracker(Tracker):
    name = "mlflow"

    def __init__(self, recipe: Recipe, out_dir: Path) -> None:
        import mlflow

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if uri and uri.startswith(("http://", "https://")) and not reachable(uri):
            raise ConnectionError(f"MLFLOW_TRACKING_URI {uri} unreachable")
        if not uri:
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # a local run dir needs no server
            uri = (out_dir / "mlruns").resolve().as_uri()
        self.mlflow = mlflow
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", recipe.log.project))
        self.run = mlflow.start_run(run_name=recipe.log.run_name or out_dir.name)
        flat = _flatten(recipe.model_dump(mode="json"))
        mlflow.log_params({k: str(v)[:500] for k, v in flat.items()})

    @staticmethod
    def key(k: str) -> str:
        # '@' is not allowed in MLflow names, and '/' makes `loss` (a file) and `loss/lm` (a dir) collide in
        # a file store: eval/nDCG@10 -> eval.nDCG_at_10
        return k.replace("@", "_at_").replace("/", ".")

    def log(self, values: dict[str, float], step: int | None) -> None:
        self.mlflow.log_metrics({self.key(k): v for k, v in values.items()}, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def start_tracker(name: str, mode: str, recipe: Recipe, out_dir: Path) -> Tracker | None:
    """Start one tracker; None (with a warning) when it cannot start: the run goes on without it."""
    try:
        if name == "wandb":
            return WandbTracker(recipe, out_dir, mode)
        if name == "tensorboard":
            return TensorBoardTracker(recipe, out_dir)
        if name == "trackio":
            return TrackioTracker(recipe, out_dir)
        if name == "mlflow":
            return MlflowTracker(recipe, out_dir)
    except ImportError as e:
        log.warning("%s is in log.report_to but not installed (%s): pip install 'lrt[trackers]'; continuing without it",
                    name, e)
    except Exception as e:  # noqa: BLE001 - a tracker must never stop training
        log.warning("%s init failed (%s); continuing without it (metrics.jsonl has everything)", name, e)
    return None


class IntervalMean:
    """Means of the numeric fields of the training records since the last `pop()`."""

    LAST = ("lr", "elapsed_s")  # values of the last step, not a mean
    SUM = ("lists",)

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.last: dict[str, Any] = {}
        self.n = 0

    def add(self, rec: dict[str, Any]) -> None:
        self.n += 1
        self.last = rec
        for k, v in _numeric(rec).items():
            self.sums[k] = self.sums.get(k, 0.0) + v
            self.counts[k] = self.counts.get(k, 0) + 1

    def pop(self) -> dict[str, Any] | None:
        if not self.n:
            return None
        out: dict[str, Any] = {"step": self.last.get("step")}
        for k, s in self.sums.items():
            if k in self.LAST:
                out[k] = self.last[k]
            elif k in self.SUM:
                out[k] = int(s)
            else:
                out[k] = s / self.counts[k]
        out["log_steps"] = self.n
        self.__init__()
        return out


def json_safe(v: Any) -> Any:
    """Non-finite floats become null (bare NaN/Infinity is not JSON; a diverged step stays readable)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    return v


class MetricsLogger:
    def __init__(self, out_dir: Path, recipe: Recipe, enabled: bool) -> None:
        self.enabled = enabled
        self.recipe = recipe
        self.out_dir = out_dir
        self.path = out_dir / "metrics.jsonl"
        self.trackers: list[Tracker] = []
        self.interval = IntervalMean()
        self.modes = resolve_trackers(recipe)  # raises on a bad LRT_REPORT_TO on every rank
        if not enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, mode in self.modes.items():
            t = start_tracker(name, mode, recipe, out_dir)
            if t is not None:
                self.trackers.append(t)

    @property
    def active(self) -> list[str]:
        return [t.name + (f" ({t.mode})" if isinstance(t, WandbTracker) else "") for t in self.trackers]

    def log(self, rec: dict[str, Any]) -> None:
        """Append one record to metrics.jsonl and send its numeric fields to every tracker."""
        if not self.enabled:
            return
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(json_safe(rec), allow_nan=False) + "\n")  # NaN/Inf -> null: valid JSON
        values = _numeric(rec)
        for t in list(self.trackers):
            try:
                t.log(values, rec.get("step"))
            except Exception as e:  # noqa: BLE001 - logging must never stop training
                log.warning("%s logging failed (%s); continuing without it", t.name, e)
                self.trackers.remove(t)

    def add_step(self, rec: dict[str, Any]) -> None:
        """Accumulate one optimizer step into the current logging interval."""
        self.interval.add(rec)

    def flush_steps(self) -> dict[str, Any] | None:
        """Log (and return) the mean record of the steps since the last flush."""
        rec = self.interval.pop()
        if rec is not None:
            self.log(rec)
        return rec

    def progress(self, total: int, initial: int = 0) -> Progress:
        return Progress(total, "train", initial=initial, unit="step", enabled=self.enabled and self.recipe.log.progress)

    def close(self) -> None:
        for t in self.trackers:
            try:
                t.close()
            except Exception as e:  # noqa: BLE001
                log.warning("%s close failed (%s)", t.name, e)
        self.trackers = []
