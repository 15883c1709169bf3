"""`lrt export RUN_DIR --out DIR [--push-to-hub REPO [--private]]`, or `lrt export EXPORT_DIR --push-to-hub REPO`."""
from __future__ import annotations

import argparse
from pathlib import Path

from lrt.errors import LrtError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="lrt export",
        description="Write a Hugging Face reranker checkpoint from a run's newest complete checkpoint "
        "(LoRA merged into an unquantised reload of the base; DeepSpeed ZeRO-2/3 checkpoints consolidated), "
        "with a model card; optionally push it to the Hugging Face Hub.",
        epilog="The Hub token comes from HF_TOKEN (or `hf auth login`) and is never written by lrt; HF_ENDPOINT "
        "selects another Hub. `lrt export RUN_DIR/final --push-to-hub REPO` pushes an existing export as it is.",
    )
    p.add_argument("run_dir", help="an lrt run directory (output_dir of `lrt train`), or an export dir to push")
    p.add_argument("--out", default=None, help="where to write the checkpoint (required unless pushing an export dir)")
    p.add_argument("--checkpoint", default=None, help="checkpoint dir (default: the newest complete one)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="dtype of the merged weights")
    p.add_argument("--adapter-only", action="store_true", help="write the LoRA adapter (PEFT format) instead of merging")
    p.add_argument("--as-trained", action="store_true",
                   help="rebuild exactly as trained (QLoRA: 4-bit base) instead of reloading the base unquantised; "
                   "merging into a quantised base is refused")
    p.add_argument("--push-to-hub", metavar="REPO", default=None, help="upload the export to this Hub repo (org/name)")
    p.add_argument("--private", action="store_true", help="create the Hub repo as private")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an --out directory that holds another kind of export or files lrt did not write "
                   "(replaced whole, never mixed; an export of the same kind is always replaced whole)")
    p.add_argument("--to-seq-cls", action="store_true",
                   help="convert a pointwise export (RUN_DIR/final, or its LoRA adapter/, merged first) into a "
                   "one-output sequence classifier (score row = W[yes] - W[no]) whose chat template renders "
                   "(query, passage) pairs, for sentence-transformers' CrossEncoder and vLLM's score API")
    a = p.parse_args(argv)
    from lrt.export import export_run, push_to_hub

    src = Path(a.run_dir)
    if a.push_to_hub:  # before anything is written: a bad repo id must not leave a half-used export
        from lrt.export import check_repo_id

        check_repo_id(a.push_to_hub)
    if a.to_seq_cls:
        if a.out is None:
            raise LrtError("--to-seq-cls needs --out DIR (where to write the sequence classifier)")
        if not (src / "lrt_reranker.json").exists():
            raise LrtError(f"{src}: no lrt_reranker.json; --to-seq-cls converts an export (e.g. RUN_DIR/final)")
        from lrt.export import export_seq_cls

        print(f"exported sequence classifier: {export_seq_cls(src, a.out, a.dtype, a.overwrite)}")
        return 0
    if (src / "lrt_reranker.json").exists() and not (src / "recipe.resolved.yaml").exists():
        if not a.push_to_hub:
            raise LrtError(f"{src} is already an export; give a run directory, or --push-to-hub REPO to upload it")
        if a.out or a.checkpoint:
            raise LrtError(f"{src} is an export: --out/--checkpoint apply to run directories only")
        print(f"pushed: {push_to_hub(src, a.push_to_hub, a.private)}")  # the card names the repo in the upload only
        return 0
    if a.out is None:
        raise LrtError("--out DIR is required (where to write the export)")
    out = export_run(a.run_dir, a.out, a.checkpoint, a.dtype, a.adapter_only, a.as_trained, usage_path=a.push_to_hub,
                     overwrite=a.overwrite)
    print(f"exported: {out}")
    if a.push_to_hub:
        print(f"pushed: {push_to_hub(out, a.push_to_hub, a.private)}")
    return 0

