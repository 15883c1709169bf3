"""`lrt export RUN_DIR --out DIR`."""
from __future__ import annotations

import argparse

from lrt.export import export_run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lrt export", description="Merge LoRA and write a Hugging Face reranker checkpoint.")
    p.add_argument("run_dir", help="an lrt run directory (output_dir of `lrt train`)")
    p.add_argument("--out", required=True, help="where to write the checkpoint")
    p.add_argument("--checkpoint", default=None, help="checkpoint dir (default: the newest complete one)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="dtype of the merged weights")
    p.add_argument("--adapter-only", action="store_true", help="write the LoRA adapter instead of merging")
    a = p.parse_args(argv)
    out = export_run(a.run_dir, a.out, a.checkpoint, a.dtype, a.adapter_only)
    print(f"exported: {out}")
    return 0
