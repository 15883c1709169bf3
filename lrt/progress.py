"""Progress for long loops: a tqdm bar on a terminal, periodic plain log lines otherwise.

Why: under Slurm or CI stderr is a file, and tqdm's carriage-return redraws turn a 4,000-step
run into megabytes of one "line". When stderr is not a TTY, `Progress` writes one ordinary log
line every `LRT_PROGRESS_INTERVAL` seconds (default 30) plus one at the end. A leaf module (no lrt
imports) so every layer, prep included, can use it.
"""
from __future__ import annotations

import collections
import logging
import os
import sys
import time
from typing import Any, Iterable, Iterator, TypeVar

log = logging.getLogger("lrt")
T = TypeVar("T")
# The plain lines' rate and ETA come from the last RATE_WINDOW seconds (at least 2 print intervals), not
# from the start: under a changing load an average since the start keeps a stale ETA for many minutes.
RATE_WINDOW = 120.0


def is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get("LRT_PROGRESS_INTERVAL", "30")))
    except ValueError:
        return 30.0


def _hms(s: float) -> str:
    s = int(max(0, s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


class Progress:
    """`update(n)`, `set_postfix(**kw)`, `close()`; a no-op when not `enabled` (non-main ranks)."""

    def __init__(self, total: int | None, desc: str, *, initial: int = 0, unit: str = "it", enabled: bool = True,
                 leave: bool = True) -> None:
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.enabled, self.leave = enabled, leave
        self.postfix: dict[str, Any] = {}
        self._bar = None
        self._t0 = self._last = time.monotonic()
        self._n0 = initial
        self._samples: collections.deque[tuple[float, int]] = collections.deque([(self._t0, initial)])
        self._closed = False
        self._printed_at = initial - 1
        if enabled and is_tty():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, leave=leave)

    def update(self, n: int = 1) -> None:
        if not self.enabled:
            return
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._samples[-1][0] >= 0.5:  # at most two samples a second: bounded memory
            self._samples.append((now, self.n))
        if now - self._last >= _interval():
            self._last = now
            self._line()

    def restart_clock(self) -> None:
        """Measure rate and ETA from now (e.g. after an evaluation that ran before the first step)."""
        self._t0 = self._last = time.monotonic()
        self._n0 = self.n
        self._samples = collections.deque([(self._t0, self.n)])
        if self._bar is not None:
            self._bar.reset(total=self.total)
            self._bar.update(self.n)

    def set_postfix(self, **kw: Any) -> None:
        if not self.enabled:
            return
        self.postfix.update(kw)
        if self._bar is not None:
            self._bar.set_postfix(**self.postfix)

    def rate(self) -> float:
        """Items per second over the recent window (as tqdm smooths its bar's rate), else since the start."""
        now = time.monotonic()
        window = max(RATE_WINDOW, 2 * _interval())
        while len(self._samples) > 1 and now - self._samples[1][0] >= window:
            self._samples.popleft()  # keep one sample at or before the window's start
        t0, n0 = self._samples[0]
        return (self.n - n0) / (now - t0) if now > t0 else 0.0

    def line(self) -> str:
        """The plain-text status: `desc 120/4000 (3%) loss=0.41 | 2.31 it/s, 00:52 elapsed, eta 28:01`,
        rate and ETA from the last couple of minutes."""
        el = time.monotonic() - self._t0
        rate = self.rate()
        pos = f"{self.n}/{self.total} ({100 * self.n / self.total:.0f}%)" if self.total else f"{self.n}"
        post = " ".join(f"{k}={v}" for k, v in self.postfix.items())
        eta = f", eta {_hms((self.total - self.n) / rate)}" if self.total and rate > 0 and self.n < self.total else ""
        return f"{self.desc} {pos}{' ' + post if post else ''} | {rate:.2f} {self.unit}/s, {_hms(el)} elapsed{eta}"

    def _line(self) -> None:
        self._printed_at = self.n
        log.info("%s", self.line())

    def close(self) -> None:
        if not self.enabled or self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self._printed_at != self.n and (self.leave or self._printed_at >= self._n0):
            self._line()  # a short transient loop (leave=False) that never printed stays silent

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def track(it: Iterable[T], desc: str, total: int | None = None, *, unit: str = "it", enabled: bool = True,
          leave: bool = True) -> Iterator[T]:
    """Iterate with a `Progress` (total from len() when available)."""
    if total is None:
        total = len(it) if hasattr(it, "__len__") else None  # type: ignore[arg-type]
    with Progress(total, desc, unit=unit, enabled=enabled, leave=leave) as p:
        for x in it:
            yield x
            p.update(1)
