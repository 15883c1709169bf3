"""The exported model itself: rebuild it from the recipe, merge LoRA, write weights + tokenizer +
`lrt_reranker.json` + the model card.

LoRA adapters are merged into a bf16/fp32 *reload* of the base, rebuilt from the recipe on the CPU of
rank 0: the same code path for single-process, DDP, ZeRO-2/3 (whose live weights are partitioned) and
QLoRA (whose live base is quantised; merging there is refused because it would bake the quantisation
error into the weights).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from lrt.config import Recipe
from lrt.errors import LrtError

# what a rebuilt export model must not have: no k-bit base, no DeepSpeed, no training-only hooks
EXPORT_OVERRIDES = ["model.gradient_checkpointing=false", "model.neftune_alpha=null", "train.resume=none",
                    "train.deepspeed=null"]


def save_meta(out: Path, r: Recipe, tok: Any = None) -> None:
    from lrt.families import of_recipe

    if tok is None:  # every caller has saved the tokenizer to `out` first
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(out))
    of_recipe(r).export_meta(r, tok).save(out)  # what the family records (lrt_reranker.json)


def model_card(out: Path, r: Recipe, source: str, n_lists: int | None = None, run_dir: Path | None = None,
               **card: Any) -> None:
    """README.md in the Hugging Face format (lrt.export.card): `step`, `selection`, `eval_history` say
    which weights these are and list their own metrics."""
    from lrt.export.card import write_card

    write_card(out, r, source, n_lists, run_dir, **card)


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
        ov.append(f"model.dtype={dtype or unquantised_dtype(r)}")
        ov.append("model.attn_implementation=sdpa")
    return recipe_from_dict(r.model_dump(mode="json"), ov, "export", check_files=False)


def unquantised_dtype(r: Recipe) -> str:
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
                 state_dict: dict[str, torch.Tensor] | None = None, run_dir: Path | None = None, **card: Any) -> Path:
    """Weights (safetensors; plus generation_config.json), tokenizer, lrt_reranker.json, model card."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), state_dict=state_dict, safe_serialization=True)
    tok.save_pretrained(str(out))
    save_meta(out, r, tok)
    model_card(out, r, source, n_lists, run_dir, **card)
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

    from lrt.train.checkpoint import vet_pickles

    vet_pickles(cp / "ds")  # zero_to_fp32 unpickles with weights_only=False: refuse code first
    lora = hasattr(model, "peft_config")
    state = get_fp32_state_dict_from_zero_checkpoint(str(cp), tag="ds", exclude_frozen_parameters=lora)
    # the engine wrapped RerankModule, whose attribute `model` is the HF/PEFT model
    state = {k.removeprefix("model."): v for k, v in state.items()}
    return {k: v for k, v in state.items() if k in trainable}
