"""`lrt train RECIPE --nproc-per-node N [--nnodes M]`: re-execute this command under torchrun.

Single node: `torchrun --standalone` (it picks a free rendezvous port). Several nodes: a c10d
rendezvous on the head node, `--rdzv_endpoint $HEAD:29500`, taken from `LRT_RDZV_ENDPOINT` or
`MASTER_ADDR[:MASTER_PORT]`; run the same command once per node (launch/slurm-multinode.sbatch does).
`DRY_RUN=1` (or `LRT_DRY_RUN=1`) prints the command instead of running it.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys

from lrt.errors import LrtError

DEFAULT_RDZV_PORT = 29500


def rendezvous_endpoint(env: dict[str, str] | None = None) -> str:
    """HEAD:PORT for a multi-node c10d rendezvous (the port defaults to 29500)."""
    env = dict(os.environ) if env is None else env
    ep = env.get("LRT_RDZV_ENDPOINT")
    if ep:
        return ep if ":" in ep else f"{ep}:{DEFAULT_RDZV_PORT}"
    head = env.get("MASTER_ADDR")
    if not head:
        raise LrtError(
            "--nnodes > 1 needs the head node's address: set LRT_RDZV_ENDPOINT=HEAD:29500 (or MASTER_ADDR), "
            "and run the same command on every node (see launch/slurm-multinode.sbatch)"
        )
    return f"{head}:{env.get('MASTER_PORT', DEFAULT_RDZV_PORT)}"


def torchrun_command(recipe: str, overrides: list[str], nproc: int, nnodes: int = 1,
                     env: dict[str, str] | None = None, python: str | None = None) -> list[str]:
    """The torchrun command line that runs `lrt train RECIPE overrides` on every process."""
    if nproc < 1 or nnodes < 1:
        raise LrtError(f"--nproc-per-node and --nnodes must be >= 1 (got {nproc}, {nnodes})")
    env = dict(os.environ) if env is None else env
    cmd = [python or sys.executable, "-m", "torch.distributed.run"]
    if nnodes == 1:
        cmd += ["--standalone", "--nnodes", "1"]
    else:
        rdzv_id = env.get("LRT_RDZV_ID") or env.get("SLURM_JOB_ID") or "lrt"
        cmd += ["--nnodes", str(nnodes), "--rdzv_backend", "c10d", "--rdzv_endpoint", rendezvous_endpoint(env),
                "--rdzv_id", rdzv_id]
    cmd += ["--nproc_per_node", str(nproc), "-m", "lrt.cli", "train", recipe, *overrides]
    return cmd


def dry_run(env: dict[str, str] | None = None) -> bool:
    env = dict(os.environ) if env is None else env
    return any(env.get(k, "").lower() in ("1", "true", "yes") for k in ("DRY_RUN", "LRT_DRY_RUN"))


def relaunch_torchrun(recipe: str, overrides: list[str], nproc: int, nnodes: int = 1,
                      output_dir: str | None = None) -> int:
    """Run (or, under DRY_RUN=1, print) the torchrun command; returns its exit code, or 75
    (`lrt.errors.PREEMPTED_EXIT`) when the workers stopped on a preemption signal after a checkpoint.

    torchrun sets LOCAL_RANK in the children, which is how `lrt train` knows not to relaunch again.

    Preemption: torchrun itself would kill its workers 30 s after a SIGTERM (too soon for a 7B
    checkpoint) and dies on SIGUSR1. So torchrun starts with both signals ignored
    (TORCHELASTIC_SIGNALS_TO_HANDLE without SIGTERM; the ignore is inherited), this launcher forwards
    SIGTERM/SIGUSR1 to the workers as SIGUSR1, and each worker finishes its step, checkpoints and
    exits; `output_dir/preempted.json` tells this launcher to return 75 (Slurm requeues on it)."""
    cmd = torchrun_command(recipe, overrides, nproc, nnodes)
    if dry_run():
        print(shlex.join(cmd))
        return 0
    import signal
    import time
    from pathlib import Path

    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, nproc))))
    env["TORCHELASTIC_SIGNALS_TO_HANDLE"] = "SIGINT,SIGHUP,SIGQUIT"
    env["LRT_LAUNCHER_PID"] = str(os.getpid())
    start = time.time()
    forwarded: list[str] = []
    sigs = [signal.SIGTERM, signal.SIGUSR1]
    old = {s: signal.signal(s, signal.SIG_IGN) for s in sigs}  # inherited by torchrun (and its workers)
    try:
        proc = subprocess.Popen(cmd, env=env)

        def forward(signum: int, frame: object) -> None:
            forwarded.append(signal.Signals(signum).name)
            for pid in _children(proc.pid):  # the workers
                try:
                    os.kill(pid, signal.SIGUSR1)
                except ProcessLookupError:
                    pass

        for s in sigs:
            signal.signal(s, forward)
        try:
            rc = proc.wait()
        except KeyboardInterrupt:  # torchrun forwards the signal to its workers and exits on its own
            return 130
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    marker = Path(output_dir or "") / "preempted.json"
    if output_dir and marker.exists() and marker.stat().st_mtime >= start - 1:
        from lrt.errors import PREEMPTED_EXIT

        print(f"lrt: training preempted ({', '.join(forwarded) or 'signal'}); checkpoint written, "
              f"exit {PREEMPTED_EXIT}: requeue and resume with train.resume=auto", flush=True)
        return PREEMPTED_EXIT
    return rc


def _children(pid: int) -> list[int]:
    """Direct children of `pid` (from /proc): torchrun's workers."""
    out = []
    from pathlib import Path

    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, IndexError, ValueError):
                continue
    return out

