"""`lrt export RUN_DIR --out DIR`."""
from __future__ import annotations

import argparse

from lrt.export import export_run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="lrt export",
        description="Write a Hugging Face reranker checkpoint from a run's newest complete checkpoint "
        "(LoRA merged into an unquantised reload of the base; DeepSpeed ZeRO-2/3 checkpoints consolidated).",
    )
    p.add_argument("run_dir", help="an lrt run directory (output_dir of `lrt train`)")
    p.add_argument("--out", required=True, help="where to write the checkpoint")
    p.add_argument("--checkpoint", default=None, help="checkpoint dir (default: the newest complete one)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="dtype of the merged weights")
    p.add_argument("--adapter-only", action="store_true", help="write the LoRA adapter (PEFT format) instead of merging")
    p.add_argument("--as-trained", action="store_true",
                   help="rebuild exactly as trained (QLoRA: 4-bit base) instead of reloading the base unquantised; "
                   "merging into a quantised base is refused")
    a = p.parse_args(argv)
    out = export_run(a.run_dir, a.out, a.checkpoint, a.dtype, a.adapter_only, a.as_trained)
    print(f"exported: {out}")
    return 0
