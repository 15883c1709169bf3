"""Exported weights that open: a truncated or corrupt safetensors file is named with one clear error,
not deep inside transformers' loader. Below both `lrt rerank` (which loads exports) and lrt.export
(which converts them), so neither imports the other for it."""
from __future__ import annotations

import json
import struct
from pathlib import Path

from lrt.errors import LrtError


def one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:300] if lines else type(e).__name__


def check_weights(d: Path) -> None:
    """Every safetensors file of an export opens and is as long as its header says: a truncated or
    corrupt file is named here, not deep inside transformers' loader."""
    from safetensors import safe_open

    files = sorted(d.glob("*.safetensors"))
    if not files:
        raise LrtError(f"{d}: no *.safetensors weights; re-export the model with `lrt export`")
    for f in files:
        try:
            with open(f, "rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                if n > f.stat().st_size - 8:
                    raise ValueError(f"header length {n} exceeds the file's {f.stat().st_size} bytes")
                header = json.loads(fh.read(n))
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
            if f.stat().st_size < 8 + n + end:
                raise ValueError(f"{f.stat().st_size} bytes, the header needs {8 + n + end}")
            with safe_open(str(f), "pt") as st:
                list(st.keys())
        except Exception as e:  # noqa: BLE001 - any failure means the file is unusable
            raise LrtError(f"{f}: cannot load the model weights ({one_line(e)}; truncated or corrupt?): re-export "
                           "the model with `lrt export`") from None
