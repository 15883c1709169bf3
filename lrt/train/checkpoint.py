"""Atomic, verified checkpoints with everything exact resume needs.

A checkpoint is written into `checkpoints/.tmp-step-N`, completed with `trainer_state.json` and
then `manifest.json` (size and sha256 of every file), renamed to `checkpoints/step-N`; the
`latest` marker is replaced last. A crash at any point leaves the previous checkpoint and marker
untouched: only `step-*` directories holding a `trainer_state.json` count as checkpoints, and
`.tmp-*` leftovers are ignored (and removed).

On resume every candidate is verified against its manifest (missing, truncated or modified files)
and, once loaded, its weights are checked for NaN/Inf; a failing one is skipped with a warning
naming the problem, and the newest verified checkpoint is used (`resume_candidates`).

Nothing here unpickles: the RNG state is stored as tensors and plain types and read with
`torch.load(weights_only=True)`; weights are safetensors. The one exception is DeepSpeed's own
loader (`engine.load_checkpoint`), which reads its `ds/*.pt` files with `weights_only=False`; lrt
verifies those files against the manifest first and lists the globals each one references without
unpickling it (`vet_pickles`): anything beyond torch's weights-only set and DeepSpeed's own data
classes is refused, so a crafted `.pt` fails before DeepSpeed opens it.

Contents: `trainable.safetensors` (full model, or LoRA adapter + modules_to_save) with
`optimizer.pt` / `scheduler.pt`, or DeepSpeed's own `ds/` tag (fp32 master weights, optimizer
partitions and the client scheduler); `adapter/` for LoRA runs; `rng-rank{r}.pt` for every rank;
`recipe.yaml`; and the step (= data position, see StepSampler) in `trainer_state.json`.

`LRT_FAULT=ACTION:POINT:STEP` injects failures for the kill/resume tests (see `fault`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import shutil
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np
import torch

from lrt.errors import LrtError

if TYPE_CHECKING:
    from lrt.io.lock import DirLock

STATE = "trainer_state.json"
MANIFEST = "manifest.json"
PREEMPTED = "preempted.json"  # written into output_dir by a run that stopped on SIGTERM/SIGUSR1
log = logging.getLogger("lrt")


class CheckpointError(LrtError):
    """A checkpoint that cannot be used (corrupt, incompatible, unsafe); the message says why."""


# ---- RNG state: tensors and plain types only (loads with weights_only=True) -------------------
def rng_state() -> dict[str, Any]:
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    st: dict[str, Any] = {
        "python": {"version": int(version), "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        st["cuda"] = list(torch.cuda.get_rng_state_all())
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    py = st["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    n = st["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def safe_load(path: Path) -> Any:
    """`torch.load` with the weights-only unpickler: tensors and plain types, never code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure means the file is unusable
        raise CheckpointError(f"{path.name}: cannot be read safely ({_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0] if msg else ''}"[:300]


# ---- layout -----------------------------------------------------------------------------------
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
        raise CheckpointError(f"checkpoint does not match the model: missing {missing[:3]}, unknown {unknown[:3]}")
    bad = nonfinite(state.items())
    if bad:
        raise CheckpointError(f"trainable.safetensors holds NaN/Inf values in {bad[:3]}")
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t.to(params[n].dtype))


def nonfinite(named: Iterable[tuple[str, Any]]) -> list[str]:
    """Names of floating-point tensors holding NaN or Inf (nested dicts/lists of an optimizer state too)."""
    out: list[str] = []

    def walk(name: str, v: Any) -> None:
        if isinstance(v, torch.Tensor):
            if v.is_floating_point() and v.numel() and not bool(torch.isfinite(v).all()):
                out.append(name)
        elif isinstance(v, dict):
            for k, x in v.items():
                walk(f"{name}.{k}", x)
        elif isinstance(v, (list, tuple)):
            for i, x in enumerate(v):
                walk(f"{name}[{i}]", x)
        elif isinstance(v, float) and not math.isfinite(v):
            out.append(name)

    for n, v in named:
        walk(n, v)
    return out


# ---- writing ----------------------------------------------------------------------------------
def _write_durable(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _files(d: Path) -> list[str]:
    return sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file() and p.name != MANIFEST)


def _sha256_all(d: Path, names: list[str]) -> dict[str, str]:
    """sha256 of many files in parallel threads (hashlib releases the GIL): a ZeRO checkpoint is one
    file per rank, and one core hashes only ~0.1-1 GB/s (105 MB/s measured on a loaded 2-core box)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1, len(names)))) as pool:
        return dict(zip(names, pool.map(lambda f: _sha256(d / f), names)))


def write_manifest(d: Path) -> None:
    """Size and sha256 of every file in the checkpoint (rank 0, after every rank wrote its files)."""
    names = _files(d)
    sums = _sha256_all(d, names)
    files = {f: {"size": (d / f).stat().st_size, "sha256": sums[f]} for f in names}
    _write_durable(d / MANIFEST, json.dumps({"format": 1, "files": files}, indent=1))


def finalize(root: Path, step: int, state: dict[str, Any], keep_last: int, protect: tuple[str, ...] = ()) -> Path:
    """Rank 0, after every rank wrote its files into the tmp dir: state file, manifest, rename,
    marker, prune. `protect` names checkpoints pruning must keep (the best one under eval.select_best)."""
    tmp = tmp_dir(root, step)
    fault("in_save", step)  # test hook: every rank's files are written, the state file is not
    _write_durable(tmp / STATE, json.dumps(state, indent=2))
    write_manifest(tmp)
    final = step_dir(root, step)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _write_durable(root / ".latest.tmp", final.name)
    os.replace(root / ".latest.tmp", root / "latest")
    for old in complete_checkpoints(root)[:-keep_last]:
        if old.name not in protect:
            shutil.rmtree(old, ignore_errors=True)
            shutil.rmtree(root / "universal" / old.name, ignore_errors=True)
    return final


def write_error(e: BaseException, where: Path) -> tuple[int | None, str]:
    """(errno, message) of a failed checkpoint write. torch.save reports a full disk as a
    RuntimeError ("unexpected pos ...") and safetensors as a SafetensorError, neither with an errno:
    then the free space of the target file system decides whether it was ENOSPC."""
    import errno as _errno

    if isinstance(e, OSError):
        return e.errno, str(e)
    msg = _first_line(e)
    if "No space left" in str(e) or "os error 28" in str(e):
        return _errno.ENOSPC, msg
    try:
        st = os.statvfs(where if where.exists() else where.parent)
        if st.f_bavail * st.f_frsize < (1 << 20):  # under 1 MiB left: the write ran out of space
            return _errno.ENOSPC, msg
    except OSError:
        pass
    return None, msg


def remove_stale_tmp(root: Path) -> None:
    """Leftovers of saves that crashed (never complete, never read)."""
    if root.exists():
        for p in root.glob(".tmp-step-*"):
            shutil.rmtree(p, ignore_errors=True)


# ---- verifying and choosing -------------------------------------------------------------------
def verify(d: Path) -> str | None:
    """None when every file matches the manifest; otherwise what is wrong, in words."""
    try:
        man = json.loads((d / MANIFEST).read_text(encoding="utf-8"))["files"]
        assert isinstance(man, dict)
    except FileNotFoundError:
        return f"no {MANIFEST} (not written by this lrt version, or deleted)"
    except Exception as e:  # noqa: BLE001
        return f"{MANIFEST} is unreadable ({_first_line(e)})"
    problems, to_hash = [], []
    for f, meta in man.items():
        p = d / f
        if not p.is_file():
            problems.append(f"{f} is missing")
        elif p.stat().st_size != meta.get("size"):
            problems.append(f"{f} has {p.stat().st_size} bytes, the manifest says {meta.get('size')} (truncated?)")
        else:
            to_hash.append(f)
    sums = _sha256_all(d, to_hash)
    problems += [f"{f} does not match its sha256 checksum (modified after the save)"
                 for f in to_hash if sums[f] != man[f].get("sha256")]
    problems += [f"{f} is not in the manifest" for f in _files(d) if f not in man]
    return "; ".join(problems) or None


# The non-tensor globals DeepSpeed's ZeRO checkpoints pickle (data classes and enums, no callables
# that run code); anything else in a `ds/*.pt` file is refused before DeepSpeed unpickles it.
DEEPSPEED_GLOBALS = frozenset({
    "deepspeed.utils.tensor_fragment.fragment_address",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
})


def vet_pickles(d: Path) -> None:
    """Check every `.pt` under `d` before DeepSpeed unpickles it with `weights_only=False`: the
    globals it references (read without executing anything) must be torch's weights-only set or
    DEEPSPEED_GLOBALS, so a crafted file (`__reduce__` -> os.system) is refused first."""
    from torch.serialization import get_unsafe_globals_in_checkpoint

    for p in sorted(d.rglob("*.pt")):
        try:
            unsafe = set(get_unsafe_globals_in_checkpoint(p))
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"{p.relative_to(d.parent)} is unreadable ({_first_line(e)})") from None
        if unsafe - DEEPSPEED_GLOBALS:
            raise CheckpointError(f"{p.relative_to(d.parent)} references {sorted(unsafe - DEEPSPEED_GLOBALS)[:3]}, "
                                  "which DeepSpeed checkpoints never contain: refusing to unpickle it")


def universal_checkpoint(ckpt_dir: Path) -> Path:
    """DeepSpeed's universal form of `ckpt_dir/ds` (converted once, with DeepSpeed's own
    `ds_to_universal`, into `checkpoints/universal/step-N/ds`), which loads on any number of
    processes. Rank 0 only; atomic (converted into a tmp dir, then renamed)."""
    from types import SimpleNamespace  # ds_to_universal reads its options as attributes

    out = ckpt_dir.parent / "universal" / ckpt_dir.name
    if (out / "ds" / "zero").is_dir():
        return out
    tmp = out.parent / f".tmp-{ckpt_dir.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    log.info("converting %s to a DeepSpeed universal checkpoint (another number of processes)", ckpt_dir)
    ds_to_universal(SimpleNamespace(input_folder=str(ckpt_dir / "ds"), output_folder=str(tmp / "ds"),
                                    num_extract_workers=1, num_merge_workers=1, keep_temp_folder=False,
                                    strict=True, inject_missing_state=True))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def complete_checkpoints(root: Path) -> list[Path]:
    if not root.exists():
        return []
    return sorted(p for p in root.glob("step-*") if (p / STATE).exists())


def resume_candidates(root: Path, resume: str) -> list[Path]:
    """`auto`: complete checkpoints, newest first (a crash between the rename and the marker
    update leaves `latest` one behind, so the directories decide, not the marker); a path: that
    checkpoint only; `none`: nothing."""
    if resume == "none":
        return []
    if resume != "auto":
        p = Path(resume)
        if not (p / STATE).exists():
            raise CheckpointError(f"train.resume: {p} is not a complete lrt checkpoint (no {STATE})")
        return [p]
    return complete_checkpoints(root)[::-1]


def find_resume(root: Path, resume: str) -> Path | None:
    c = resume_candidates(root, resume)
    return c[0] if c else None


def read_state(ckpt: Path) -> dict[str, Any]:
    try:
        return json.loads((ckpt / STATE).read_text(encoding="utf-8"))
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{STATE} is unreadable ({_first_line(e)})") from None


# ---- recipe compatibility ---------------------------------------------------------------------
# Keys a resumed run may change: they do not alter what the next optimizer step computes.
HARMLESS = ("output_dir", "train.max_steps", "train.epochs", "train.save_every", "train.keep_last", "train.resume",
            "train.log_every", "train.save_final", "train.overwrite_output_dir", "train.allow_data_change", "train.on_nonfinite", "eval",
            "log", "data.eval", "data.num_proc", "data.num_workers", "data.cache", "data.cache_dir",
            "model.attn_implementation",
            "model.gradient_checkpointing", "model.trust_remote_code",
            # compared as one product instead: the global batch (see recipe_changes' `world`)
            "train.per_device_batch_size", "train.grad_accum")


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out or {prefix: {}}
    if isinstance(d, list) and any(isinstance(x, dict) for x in d):
        out = {f"{prefix}.length": len(d)}
        for i, v in enumerate(d):
            out.update(_flatten(v, f"{prefix}[{i}]"))
        return out
    return {prefix: list(d) if isinstance(d, tuple) else d}


def recipe_changes(saved: dict[str, Any], current: dict[str, Any], world: tuple[int, int] = (1, 1)) -> list[str]:
    """`key: saved -> current` for every key that differs and matters for the computation.
    Micro-batch and accumulation may change together with the number of processes (`world`: saved,
    current) as long as the global batch (= the data each step consumes) stays the same."""
    a, b = _flatten(saved), _flatten(current)
    for d, w in ((a, world[0]), (b, world[1])):  # compare the grouping the run used (default: global batch > 1)
        if d.get("data.group_by_length") is None:
            d["data.group_by_length"] = d.get("train.per_device_batch_size", 1) * d.get("train.grad_accum", 1) * w > 1
    out = []
    ga = a.get("train.per_device_batch_size", 1) * a.get("train.grad_accum", 1) * world[0]
    gb = b.get("train.per_device_batch_size", 1) * b.get("train.grad_accum", 1) * world[1]
    if ga != gb:
        out.append(f"global batch (train.per_device_batch_size x train.grad_accum x processes): "
                   f"{a.get('train.per_device_batch_size')} x {a.get('train.grad_accum')} x {world[0]} = {ga} -> "
                   f"{b.get('train.per_device_batch_size')} x {b.get('train.grad_accum')} x {world[1]} = {gb}")
    for k in sorted(set(a) | set(b)):
        if any(k == h or k.startswith(h + ".") for h in HARMLESS):
            continue
        if a.get(k, "<unset>") != b.get(k, "<unset>"):
            out.append(f"{k}: {a.get(k, '<unset>')!r} -> {b.get(k, '<unset>')!r}")
    return out


# ---- run directory ----------------------------------------------------------------------------
RUN_ARTIFACTS = ("checkpoints", "metrics.jsonl", "recipe.resolved.yaml", "final", PREEMPTED)


RUN_LOCK = ".lrt-train.lock"  # flock held by the rank 0 of the run working in output_dir (pid, host)


def run_lock(out: Path) -> "DirLock":
    """The output_dir lock: a second `lrt train` (or quickstart) on the same output_dir is refused,
    naming the holder; a crashed or killed holder's lock is gone with it (flock), so it is taken over."""
    from lrt.io.lock import DirLock

    return DirLock(out / RUN_LOCK, lambda holder: (
        f"output_dir {out} is in use by another training run ({holder}): two runs on one output_dir would "
        "write the same checkpoints and log the same steps twice; wait for it to finish (or stop it), or "
        "choose another output_dir"), what="run lock", reentrant=True)


def previous_run(out: Path) -> list[str]:
    """What in `out` belongs to an earlier run (empty: nothing, a fresh run may start here)."""
    if out.exists() and not out.is_dir():
        raise LrtError(f"output_dir {out} is a file, not a directory: choose another output_dir")
    return [n for n in RUN_ARTIFACTS if (out / n).exists() and not (n == "checkpoints" and not any((out / n).iterdir()))]


def clear_previous_run(out: Path) -> None:
    for n in RUN_ARTIFACTS:
        p = out / n
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def truncate_metrics(path: Path, step: int) -> int:
    """Drop metrics.jsonl records after `step` (the steps a resumed run repeats) and any torn last
    line; returns how many lines were dropped. Atomic: a crash leaves the old or the new file."""
    if not path.exists():
        return 0
    keep, dropped = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
            ok = isinstance(rec, dict) and int(rec.get("step", 0)) <= step
        except (ValueError, TypeError):
            ok = False
        if ok:
            keep.append(line)
        else:
            dropped += 1
    if dropped:
        from lrt.io.atomic import atomic_write

        atomic_write(path, lambda fh: fh.write("".join(x + "\n" for x in keep).encode("utf-8")))
    return dropped


# ---- preemption -------------------------------------------------------------------------------
class Preemption:
    """SIGTERM / SIGUSR1 set a flag; the loop checks it after every optimizer step, checkpoints and
    exits with `lrt.errors.PREEMPTED_EXIT`. Handlers are installed only in the main thread."""

    SIGNALS = ("SIGTERM", "SIGUSR1")

    def __init__(self) -> None:
        self.signal: str | None = None
        self._old: dict[int, Any] = {}

    def install(self) -> "Preemption":
        import threading

        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                sig = getattr(signal, name, None)
                if sig is not None:
                    self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signal.Signals(signum).name

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


ACTIVE_PREEMPTION: Preemption | None = None  # lets `fault("pause")` wake up when a signal arrives


def fault(point: str, step: int) -> None:
    """Failure injection for the kill/resume tests: `LRT_FAULT=ACTION:POINT:STEP` on rank 0, with
    ACTION `kill` (SIGKILL itself) or `pause` (sleep, for the test to SIGKILL the process group or
    to send SIGTERM/SIGUSR1, which ends the pause) and POINT `after_step` (step logged),
    `in_save` (every rank's files are in the tmp dir, `trainer_state.json` is not: a
    half-written checkpoint), `in_eval` (an evaluation begins: step 0 is `eval.at_start`, the last
    step `eval.at_end`) or `in_final` (`final/` is about to be written)."""
    spec = os.environ.get("LRT_FAULT")
    if not spec or os.environ.get("RANK", "0") != "0":
        return
    action, p, at = (spec.split(":") + ["", "", ""])[:3]
    if p != point or not at.isdigit() or int(at) != step:
        return
    print(f"LRT_FAULT: {action} at {point} of step {step}", flush=True)
    if action == "pause":  # bounded: a forgotten paused run dies on its own (and its peers then fail)
        end = time.monotonic() + float(os.environ.get("LRT_FAULT_PAUSE_S", "300"))
        while time.monotonic() < end:
            if ACTIVE_PREEMPTION is not None and ACTIVE_PREEMPTION.signal:
                return
            time.sleep(0.05)
        action = "kill"
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
