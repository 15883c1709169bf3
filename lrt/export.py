"""Export a Hugging Face checkpoint that reranks exactly as trained.

Writes safetensors, the tokenizer, the generation config, `lrt_reranker.json` (prompt template,
identifier scheme, window) and a model card (recipe, data, metrics). LoRA adapters are merged into a
bf16/fp32 *reload* of the base, rebuilt from the recipe on the CPU of rank 0: the same code path for
single-process, DDP, ZeRO-2/3 (whose live weights are partitioned) and QLoRA (whose live base is
quantised; merging there is refused because it would bake the quantisation error into the weights).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lrt.config import Recipe
from lrt.errors import LrtError
from lrt.rerank import RerankerMeta

log = logging.getLogger("lrt")

# what a rebuilt export model must not have: no k-bit base, no DeepSpeed, no training-only hooks
EXPORT_OVERRIDES = ["model.gradient_checkpointing=false", "model.neftune_alpha=null", "train.resume=none",
                    "train.deepspeed=null"]


def save_meta(out: Path, r: Recipe) -> None:
    from lrt.train.data import prompt_template

    w = r.eval.window or r.data.window or 20
    RerankerMeta(template=prompt_template(r).to_dict(), window=w, stride=r.eval.stride or max(1, w // 2),
                 max_length=r.data.max_length).save(out)


def _metrics_summary(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(last training record, last evaluation record) from the run's metrics.jsonl."""
    train_rec: dict[str, Any] = {}
    eval_rec: dict[str, Any] = {}
    f = run_dir / "metrics.jsonl"
    if f.exists():
        for line in f.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "loss" in rec:
                train_rec = rec
            elif any(k.startswith("eval/") for k in rec):
                eval_rec = rec
    return train_rec, eval_rec


def model_card(out: Path, r: Recipe, source: str, n_lists: int | None = None, run_dir: Path | None = None) -> None:
    run_dir = Path(run_dir or r.output_dir)
    last, evals = _metrics_summary(run_dir)
    resolved = run_dir / "recipe.resolved.yaml"
    loss = {k: round(v, 6) for k, v in last.items() if k.startswith("loss") and isinstance(v, float)}
    lines = [
        "---", "library_name: transformers", "tags: [lrt, reranker, listwise]", "---",
        f"# {run_dir.name}", "",
        "Listwise reranker trained with lrt (FIRST-style first-token scoring).", "",
        f"- base model: `{r.model.name_or_path}`" + (f" + LoRA r={r.model.lora.r}" if r.model.lora else "")
        + (f" (QLoRA {r.model.quantization.bits}-bit {r.model.quantization.quant_type})" if r.model.quantization else ""),
        f"- training data: `{r.data.train}`" + (f" ({n_lists} lists)" if n_lists is not None else ""),
        "- objective: " + ", ".join(f"{t.weight} x {t.name} {t.params or ''}".rstrip() for t in r.loss),
        f"- identifiers: {r.identifier_scheme()}; exported from: {source}",
        f"- last training step: {json.dumps({'step': last.get('step'), **loss})}",
        f"- last evaluation: {json.dumps(evals)}", "",
        "Rerank with `lrt.Reranker.from_pretrained(path)` or `lrt rerank --model path ...`; it is also a plain",
        "`AutoModelForCausalLM` checkpoint.", "",
        "## Recipe", "```yaml", resolved.read_text(encoding="utf-8") if resolved.exists() else "", "```",
    ]
    (out / "README.md").write_text("\n".join(lines), encoding="utf-8")


def save_adapter(peft_model: nn.Module, state: dict[str, torch.Tensor] | None, out: Path) -> Path:
    """PEFT adapter dir from an explicit (gathered) state dict. Under ZeRO-3 the live LoRA tensors
    are empty partitions, so `save_pretrained()` without a state dict writes an empty adapter: the
    well-known silent failure this guards against (and checks)."""
    from safetensors import safe_open

    peft_model.save_pretrained(str(out), state_dict=state, safe_serialization=True, save_embedding_layers=False)
    f = out / "adapter_model.safetensors"
    with safe_open(str(f), "pt") as fh:
        sizes = [fh.get_slice(k).get_shape() for k in fh.keys()]
    if not sizes or any(0 in s or not s for s in sizes):
        raise RuntimeError(f"{f}: empty LoRA adapter written ({len(sizes)} tensors, shapes {sizes[:3]})")
    return out


def merge_lora(model: Any) -> Any:
    """Merge LoRA weights; refuse when the base is quantised (merging would bake in its error)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base, "is_loaded_in_4bit", False) or getattr(base, "is_loaded_in_8bit", False) or any(
        type(m).__name__ in ("Linear4bit", "Linear8bitLt", "Params4bit") for m in base.modules()
    ):
        raise LrtError(
            "refusing to merge LoRA into a quantised (4/8-bit) base: the merged weights would carry the "
            "quantisation error. Use `lrt export RUN_DIR --out DIR [--dtype bfloat16|float32]` (without "
            "--as-trained), which reloads the base unquantised and merges there, or keep the adapter (--adapter-only)."
        )
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def export_recipe(r: Recipe, dtype: str | None = None, as_trained: bool = False) -> Recipe:
    """The recipe to rebuild the trained model on CPU for export: unquantised in `dtype` unless
    `as_trained` (then exactly as trained, incl. a k-bit base)."""
    from lrt.config import recipe_from_dict

    ov = list(EXPORT_OVERRIDES)
    if not as_trained:
        ov.append("model.quantization=null")
        ov.append(f"model.dtype={dtype or _unquantised_dtype(r)}")
        ov.append("model.attn_implementation=sdpa")
    return recipe_from_dict(r.model_dump(mode="json"), ov, "export", check_files=False)


def _unquantised_dtype(r: Recipe) -> str:
    return r.model.quantization.compute_dtype if r.model.quantization else r.model.dtype


def rebuild(r: Recipe, tok: Any, trainable: dict[str, torch.Tensor]) -> nn.Module:
    """Fresh CPU model from the recipe (base weights from `name_or_path`) + the trained tensors."""
    from lrt.modeling import load_model
    from lrt.train import checkpoint as ckpt
    from lrt.train.zero import hf_zero3_suspended

    with hf_zero3_suspended():
        model = load_model(r, tok)
    ckpt.load_trainable_state(model, trainable)
    return model.eval()


def write_export(model: nn.Module, tok: Any, r: Recipe, out: Path, source: str, n_lists: int | None = None,
                 state_dict: dict[str, torch.Tensor] | None = None, run_dir: Path | None = None) -> Path:
    """Weights (safetensors; plus generation_config.json), tokenizer, lrt_reranker.json, model card."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), state_dict=state_dict, safe_serialization=True)
    tok.save_pretrained(str(out))
    save_meta(out, r)
    model_card(out, r, source, n_lists, run_dir)
    return out


def export_trained(trainer: Any, out: Path) -> Path:
    """End of training. Every rank calls this (ZeRO-3 gathers collectively); rank 0 writes.

    Full fine-tuning: the gathered weights are saved as they are. LoRA: `out/adapter/` (PEFT
    format) and, unless the base is quantised, the merged model in `out/`. QLoRA: adapter only,
    with NOT_MERGED.txt pointing to `lrt export` (which reloads the base unquantised)."""
    from lrt.scoring import unwrap
    from lrt.train.zero import gather_on_rank0

    env, r, model = trainer.env, trainer.r, trainer.hf_model
    lora = r.model.lora is not None
    if lora:
        state = gather_on_rank0(model, env.is_main)
    elif trainer.zero3:
        base = unwrap(model)
        state = gather_on_rank0(base, env.is_main, only_trainable=False)
        if state is not None:  # persistent buffers are never partitioned
            keys = set(base.state_dict())
            state.update({n: b.detach().cpu() for n, b in base.named_buffers() if n in keys})
    else:
        state = None
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        n = len(trainer.train_examples)
        src = f"end of training (step {trainer.step})"
        if lora:
            assert state is not None
            adapter = save_adapter(model, state, out / "adapter")
            trainer.tok.save_pretrained(str(adapter))
            save_meta(adapter, r)
            if r.model.quantization is not None:
                (out / "NOT_MERGED.txt").write_text(
                    "QLoRA: adapter only (merging into the 4-bit base would bake in its quantisation error).\n"
                    f"Run `lrt export {r.output_dir} --out DIR [--dtype bfloat16]` to merge into an unquantised reload.\n",
                    encoding="utf-8",
                )
            else:
                merged = merge_lora(rebuild(export_recipe(r), trainer.tok, state))
                write_export(merged, trainer.tok, r, out, src, n)
        else:
            write_export(unwrap(model), trainer.tok, r, out, src, n, state_dict=state)
    env.barrier()
    return out


def load_checkpoint_tensors(cp: Path, model: nn.Module) -> dict[str, torch.Tensor]:
    """The trained tensors of a checkpoint, keyed like `model.named_parameters()`: lrt's own
    `trainable.safetensors`, or a DeepSpeed ZeRO-2/3 tag consolidated to fp32 (zero_to_fp32)."""
    from safetensors.torch import load_file

    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if (cp / "trainable.safetensors").exists():
        return load_file(str(cp / "trainable.safetensors"))
    if not (cp / "ds").is_dir():
        raise LrtError(f"{cp}: neither trainable.safetensors nor a DeepSpeed 'ds' tag: not an lrt checkpoint")
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    lora = hasattr(model, "peft_config")
    state = get_fp32_state_dict_from_zero_checkpoint(str(cp), tag="ds", exclude_frozen_parameters=lora)
    # the engine wrapped RerankModule, whose attribute `model` is the HF/PEFT model
    state = {k.removeprefix("model."): v for k, v in state.items()}
    return {k: v for k, v in state.items() if k in trainable}


def export_run(
    run_dir: str | Path, out: str | Path, checkpoint: str | None = None, dtype: str = "float32",
    adapter_only: bool = False, as_trained: bool = False,
) -> Path:
    """`lrt export RUN_DIR --out DIR`: rebuild the model from the run's resolved recipe (unquantised,
    in `dtype`), load the trained tensors of a checkpoint (default: newest complete), merge LoRA,
    and write a plain Hugging Face reranker checkpoint. `as_trained` rebuilds exactly as trained
    (QLoRA: 4-bit), where merging is refused with an explanation."""
    from lrt.config import load_recipe
    from lrt.modeling import load_tokenizer
    from lrt.train import checkpoint as ckpt

    run_dir, out = Path(run_dir), Path(out)
    recipe_file = run_dir / "recipe.resolved.yaml"
    if not recipe_file.exists():
        raise LrtError(f"{run_dir}: not an lrt run directory (no recipe.resolved.yaml)")
    trained = load_recipe(recipe_file, ["train.resume=none", "train.deepspeed=null"], check_files=False)
    r = export_recipe(trained, dtype, as_trained)
    cp = ckpt.find_resume(run_dir / "checkpoints", checkpoint or "auto")
    if cp is None:
        raise LrtError(f"{run_dir}: no complete checkpoint to export (train with train.save_every, or use {run_dir}/final)")
    tok = load_tokenizer(r)
    from lrt.modeling import load_model

    model = load_model(r, tok)
    from lrt.train.checkpoint import load_trainable_state

    load_trainable_state(model, load_checkpoint_tensors(cp, model))
    model.eval()
    src = f"checkpoint {cp.name} of {run_dir}"
    if adapter_only:
        if not hasattr(model, "peft_config"):
            raise LrtError("--adapter-only needs a LoRA run (this run fine-tuned the full model)")
        from lrt.train.zero import gather_on_rank0

        save_adapter(model, gather_on_rank0(model, True), out)
        tok.save_pretrained(str(out))
        save_meta(out, r)
        model_card(out, r, src + " (adapter only)", run_dir=run_dir)
        return out
    merged = merge_lora(model)
    if not as_trained:
        merged = merged.to(getattr(torch, dtype))
    return write_export(merged, tok, r, out, src, run_dir=run_dir)
