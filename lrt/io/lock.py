"""Exclusive per-directory locks: one process works on a prep shard or a training run at a time.

An `flock` on a small lock file that also names its holder (pid, host, start time). The kernel
drops the lock when the holder exits or is killed, so a crashed run never leaves a stale lock: the
next process simply takes it over (the file's old pid is only text). On NFS, flock needs a v4 mount
with working locks. Used by `lrt prep` (`lrt.prep.output.ShardLock`) and `lrt train` (the run dir).
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from lrt.errors import LrtError


_HELD: dict[str, int] = {}  # lock file -> fd, for the locks this process holds (flock is per open file)


class DirLock:
    """`with DirLock(path, busy=...)`: hold `path` exclusively or raise one clear LrtError.

    `busy(holder)` builds the message when another process holds the lock (`holder` reads like
    "pid 123 on host n1, since 2026-...")."""

    def __init__(self, path: Path, busy: Any, what: str = "lock", reentrant: bool = False) -> None:
        self.path = Path(path)
        self.busy = busy
        self.what = what
        self.reentrant = reentrant  # share it with this process's own earlier holder (trainers in turn)
        self.fd: int | None = None

    def holder(self) -> str:
        try:
            info = json.loads(self.path.read_text(encoding="utf-8"))
            return f"pid {info['pid']} on host {info['host']}, since {info['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "a process that is just starting (pid not yet written)"

    def acquire(self) -> "DirLock":
        key = str(self.path.resolve())
        if self.reentrant and key in _HELD:  # this process holds it already (one process, several trainers in turn): share it
            self.fd, self._owner = None, False
            return self
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise LrtError(f"{self.path}: cannot create the {self.what} ({e.strerror or e}); "
                           f"check that {self.path.parent} is a writable directory") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise LrtError(f"{self.path}: cannot lock ({e.strerror or e})") from None
            raise LrtError(self.busy(self.holder())) from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self.fd, self._owner = fd, True
        _HELD[key] = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            _HELD.pop(str(self.path.resolve()), None)
            os.close(self.fd)  # releases the flock; the file stays (removing it would race a waiter)
            self.fd = None

    def __enter__(self) -> "DirLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
