"""Export a Hugging Face checkpoint that reranks exactly as trained.

Writes safetensors, the tokenizer, the generation config, `lrt_reranker.json` (prompt template,
identifier scheme, window) and a model card. LoRA adapters are merged into a bf16/fp32 reload of
the base; merging into a quantised model is refused (it would bake quantisation error in).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lrt.errors import LrtError
from lrt.rerank import RerankerMeta


def save_meta(out: Path, trainer: Any) -> None:
    r = trainer.r
    w = r.eval.window or r.data.window or 20
    RerankerMeta(
        template=trainer.template.to_dict(), window=w, stride=r.eval.stride or max(1, w // 2), max_length=r.data.max_length
    ).save(out)


def model_card(out: Path, trainer: Any) -> None:
    r = trainer.r
    evals = trainer.eval_history[-1] if trainer.eval_history else {}
    lines = [
        "---", "library_name: transformers", "tags: [lrt, reranker, listwise]", "---",
        f"# {Path(r.output_dir).name}", "",
        "Listwise reranker trained with [lrt](https://pypi.org/project/lrt/).", "",
        f"- base model: `{r.model.name_or_path}`",
        f"- training data: `{r.data.train}` ({len(trainer.train_examples)} lists)",
        "- objective: " + ", ".join(f"{t.weight} x {t.name} {t.params or ''}".rstrip() for t in r.loss),
        f"- identifiers: {r.identifier_scheme()}, steps: {trainer.step}",
        f"- last evaluation: {json.dumps(evals)}", "",
        "Rerank with `lrt.Reranker.from_pretrained(path)` or `lrt rerank --model path ...`.", "",
        "## Recipe", "```yaml", (Path(r.output_dir) / "recipe.resolved.yaml").read_text(encoding="utf-8")
        if (Path(r.output_dir) / "recipe.resolved.yaml").exists() else "", "```",
    ]
    (out / "README.md").write_text("\n".join(lines), encoding="utf-8")


def export_trained(trainer: Any, out: Path) -> Path:
    """Called at the end of training: every rank participates (ZeRO-3 gathers weights)."""
    from lrt.scoring import unwrap

    model = trainer.engine.module.model if trainer.engine is not None else trainer.hf_model
    env = trainer.env
    if trainer.r.model.quantization is not None:
        # adapters only: a quantised base cannot be merged; `lrt export` reloads the base in bf16/fp32
        if env.is_main:
            out.mkdir(parents=True, exist_ok=True)
            model.save_pretrained(out / "adapter")
            trainer.tok.save_pretrained(out / "adapter")
            save_meta(out / "adapter", trainer)
            (out / "NOT_MERGED.txt").write_text(
                "QLoRA: adapter only. Run `lrt export RUN_DIR --out DIR` to merge into a bf16/fp32 reload of the base.\n"
            )
        env.barrier()
        return out
    if trainer.engine is not None and trainer.engine.zero_optimization_stage() == 3:
        state = trainer.engine._zero3_consolidated_16bit_state_dict()  # every rank must call this
    else:
        state = None
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if hasattr(model, "merge_and_unload"):
            import copy

            merged = copy.deepcopy(model).merge_and_unload()
        else:
            merged = unwrap(model)
        if state is not None and not hasattr(model, "merge_and_unload"):
            merged.save_pretrained(out, state_dict=state, safe_serialization=True)
        else:
            merged.save_pretrained(out, safe_serialization=True)
        trainer.tok.save_pretrained(out)
        save_meta(out, trainer)
        model_card(out, trainer)
    env.barrier()
    return out


def merge_lora(model: Any) -> Any:
    """Merge LoRA weights; refuse when the base is quantised (merging would bake in its error)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base, "is_loaded_in_4bit", False) or getattr(base, "is_loaded_in_8bit", False) or any(
        type(m).__name__ in ("Linear4bit", "Linear8bitLt") for m in base.modules()
    ):
        raise LrtError(
            "refusing to merge LoRA into a quantised (4/8-bit) base: the merged weights would carry the "
            "quantisation error. Use `lrt export RUN_DIR --out DIR [--dtype bfloat16|float32]`, which reloads "
            "the base unquantised and merges there, or keep the adapter (--adapter-only)."
        )
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def export_run(
    run_dir: str | Path, out: str | Path, checkpoint: str | None = None, dtype: str = "float32",
    adapter_only: bool = False,
) -> Path:
    """`lrt export RUN_DIR --out DIR`: rebuild the model from the run's resolved recipe, load the
    trained weights of a checkpoint (default: newest complete), merge LoRA into an unquantised
    reload of the base, and write a plain Hugging Face reranker checkpoint."""
    import torch
    from safetensors.torch import load_file

    from lrt.config import load_recipe
    from lrt.modeling import load_model, load_tokenizer
    from lrt.train import checkpoint as ckpt
    from lrt.train.data import prompt_template

    run_dir, out = Path(run_dir), Path(out)
    recipe_file = run_dir / "recipe.resolved.yaml"
    if not recipe_file.exists():
        raise LrtError(f"{run_dir}: not an lrt run directory (no recipe.resolved.yaml)")
    overrides = ["model.quantization=null", f"model.dtype={dtype}", "model.gradient_checkpointing=false",
                 "train.resume=none", "train.deepspeed=null"]
    r = load_recipe(recipe_file, overrides, check_files=False)
    cp = ckpt.find_resume(run_dir / "checkpoints", checkpoint or "auto")
    if cp is None:
        raise LrtError(f"{run_dir}: no complete checkpoint to export (train with train.save_every, or use {run_dir}/final)")
    tok = load_tokenizer(r)
    model = load_model(r, tok)
    if (cp / "trainable.safetensors").exists():
        ckpt.load_trainable_state(model, load_file(str(cp / "trainable.safetensors")))
    else:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(str(cp), tag="ds")
        state = {k.removeprefix("model."): v for k, v in state.items()}
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        ckpt.load_trainable_state(model, {k: v for k, v in state.items() if k in trainable})
    out.mkdir(parents=True, exist_ok=True)
    if adapter_only:
        if not hasattr(model, "peft_config"):
            raise LrtError("--adapter-only needs a LoRA run")
        model.save_pretrained(out)
    else:
        merge_lora(model).to(getattr(torch, dtype)).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    w = r.eval.window or r.data.window or 20
    RerankerMeta(template=prompt_template(r).to_dict(), window=w, stride=r.eval.stride or max(1, w // 2),
                 max_length=r.data.max_length).save(out)
    (out / "README.md").write_text(
        f"# lrt reranker\n\nExported from `{run_dir}` checkpoint `{cp.name}` (base `{r.model.name_or_path}`, "
        f"dtype {dtype}).\n\n## Recipe\n```yaml\n{recipe_file.read_text(encoding='utf-8')}```\n", encoding="utf-8"
    )
    return out
