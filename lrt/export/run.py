"""`lrt export RUN_DIR --out DIR`: a run's verified checkpoint rebuilt on CPU and written as a plain
Hugging Face reranker, whole or not at all (lrt.export.dir)."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from lrt.config import Recipe
from lrt.errors import LrtError
from lrt.export.model import export_recipe, load_checkpoint_tensors, merge_lora, model_card, save_meta, write_export
from lrt.train.adapter import save_adapter

log = logging.getLogger("lrt")


def export_run(
    run_dir: str | Path, out: str | Path, checkpoint: str | None = None, dtype: str = "float32",
    adapter_only: bool = False, as_trained: bool = False, selection: str | None = None, usage_path: str | None = None,
    overwrite: bool = False,
) -> Path:
    """`lrt export RUN_DIR --out DIR`: rebuild the model from the run's resolved recipe (unquantised,
    in `dtype`), load the trained tensors of a checkpoint (default: newest complete), merge LoRA,
    and write a plain Hugging Face reranker checkpoint. `as_trained` rebuilds exactly as trained
    (QLoRA: 4-bit), where merging is refused with an explanation. The checkpoint is verified against
    its manifest as resume does; `out` is written whole or not at all (lrt.export.dir)."""
    from lrt.config import load_recipe
    from lrt.export.dir import check_destination, staged

    run_dir, out = Path(run_dir), Path(out)
    recipe_file = run_dir / "recipe.resolved.yaml"
    if not recipe_file.exists():
        raise LrtError(f"{run_dir}: not an lrt run directory (no recipe.resolved.yaml)")
    kind = "adapter-only" if adapter_only else "full"
    check_destination(out, kind, overwrite, protect=(run_dir / "checkpoints", recipe_file))
    trained = load_recipe(recipe_file, ["train.resume=none", "train.deepspeed=null"], check_files=False)
    r = export_recipe(trained, dtype, as_trained)
    cp = verified_checkpoint(run_dir, checkpoint)
    with staged(out, kind) as tmp:
        _export_checkpoint(run_dir, cp, r, tmp, checkpoint, as_trained, adapter_only, dtype, selection, usage_path)
    return out


def verified_checkpoint(run_dir: Path, checkpoint: str | None) -> Path:
    """The checkpoint to export, checked exactly as resume checks it (`checkpoint.verify`: every file
    against the manifest; DeepSpeed pickles vetted): `--checkpoint` must be one of this run's; by
    default the newest complete one that verifies (newer broken ones are skipped with a warning)."""
    from lrt.train import checkpoint as ckpt

    root = run_dir / "checkpoints"
    if checkpoint:
        p = Path(checkpoint)
        if p.exists() and Path(os.path.realpath(p)).parent != Path(os.path.realpath(root)):
            raise LrtError(f"--checkpoint {checkpoint}: not a checkpoint of {run_dir} (it is not in {root}); its "
                           f"weights would be exported under this run's recipe and card: export its own run "
                           f"(`lrt export {p.parent.parent} --checkpoint {checkpoint} --out DIR`)")
    candidates = ckpt.resume_candidates(root, checkpoint or "auto")
    if not candidates:
        raise LrtError(f"{run_dir}: no complete checkpoint to export (train with train.save_every, or use {run_dir}/final)")
    problems = []
    for cp in candidates:
        why = ckpt.verify(cp)
        if why is None and (cp / "ds").is_dir():
            try:
                ckpt.vet_pickles(cp / "ds")
            except ckpt.CheckpointError as e:
                why = str(e)
        if why is None:
            if problems:
                log.warning("exporting %s, an older checkpoint: %s", cp, " | ".join(problems))
            return cp
        problems.append(f"{cp}: {why}")
    raise LrtError(f"no verified checkpoint to export ({len(candidates)} tried): " + " | ".join(problems)
                   + ". Give another one with --checkpoint, or re-train")


def _export_checkpoint(run_dir: Path, cp: Path, r: Recipe, out: Path, checkpoint: str | None, as_trained: bool,
                       adapter_only: bool, dtype: str, selection: str | None, usage_path: str | None) -> Path:
    from lrt.modeling import load_tokenizer
    from lrt.train import checkpoint as ckpt

    tok = load_tokenizer(r)
    from lrt.modeling import load_model

    model = load_model(r, tok)
    from lrt.train.checkpoint import load_trainable_state

    load_trainable_state(model, load_checkpoint_tensors(cp, model))
    model.eval()
    src = f"checkpoint {cp.name} of {run_dir}"
    state = ckpt.read_state(cp)  # the checkpoint's own step and evaluations, not the run's last ones
    card = {"step": state.get("step"), "eval_history": state.get("eval_history") or None,
            "selection": selection or f"chosen with `lrt export --checkpoint {checkpoint}`" if checkpoint
            else selection or "the newest complete checkpoint", "path": usage_path}
    if adapter_only:
        if not hasattr(model, "peft_config"):
            raise LrtError("--adapter-only needs a LoRA run (this run fine-tuned the full model)")
        from lrt.train.zero import gather_on_rank0

        save_adapter(model, gather_on_rank0(model, True), out)
        tok.save_pretrained(str(out))
        save_meta(out, r)
        model_card(out, r, src + " (adapter only)", run_dir=run_dir, **card)
        return out
    merged = merge_lora(model)
    if not as_trained:
        merged = merged.to(getattr(torch, dtype))
    return write_export(merged, tok, r, out, src, run_dir=run_dir, **card)
