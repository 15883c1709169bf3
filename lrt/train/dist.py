"""Process-group set-up for 1 process, torchrun/DDP and DeepSpeed (gloo on CPU, nccl on GPU)."""
from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass
class DistEnv:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def setup(cls, use_deepspeed: bool) -> "DistEnv":
        if os.environ.get("LRT_LAUNCHER_PID") and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # lrt.launch started torchrun with it ignored
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = torch.cuda.is_available()
        device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(device)
        if use_deepspeed:
            # DeepSpeed without a launcher looks for MPI; a 1-process run only needs these defaults.
            os.environ.setdefault("RANK", "0")
            os.environ.setdefault("WORLD_SIZE", "1")
            os.environ.setdefault("LOCAL_RANK", "0")
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(_free_port()))
            import deepspeed

            if not dist.is_initialized():
                deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo", timeout=_timeout())
        elif world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo", timeout=_timeout())
        return cls(rank, world, local, device)

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        if self.world == 1 or not dist.is_initialized():
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        return t.tolist()

    def close(self) -> None:
        """Tear the process group down at the end of a run: gloo/NCCL threads still alive when the
        interpreter exits can abort a rank ("terminate called without an active exception")."""
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()

    def barrier(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.barrier()

    def broadcast_object(self, obj: object) -> object:
        """Rank 0's `obj` on every rank (what rank 0 decided, e.g. the verified checkpoint)."""
        if self.world == 1 or not dist.is_initialized():
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def any(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on any rank (signals, failures seen by one rank)."""
        return self.all_reduce_sum([1.0 if flag else 0.0])[0] > 0

    def gather_objects(self, obj: object) -> list[object]:
        if self.world == 1 or not dist.is_initialized():
            return [obj]
        out: list[object] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out


def _timeout() -> timedelta:
    """Collective timeout. Ranks wait in a barrier while rank 0 alone writes a checkpoint or merges
    a 7B LoRA export on CPU (minutes), which the 10-minute NCCL default does not always cover."""
    return timedelta(minutes=float(os.environ.get("LRT_DIST_TIMEOUT_MIN", "60")))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
