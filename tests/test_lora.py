"""LoRA and QLoRA through the shipped 7B recipes, swapped onto the tiny model (one process, CPU).

LoRA: only adapters train, checkpointing is non-reentrant with input grads, NEFTune is live; the
merged export and the adapter both reproduce the trained model's first-token scores (<= 1e-5).
QLoRA: a real 4-bit NF4 base (bitsandbytes on CPU) trains, merging into it is refused with a clear
message, and `lrt export` merges into an unquantised reload instead.
"""
from __future__ import annotations

import pytest
import torch

from lrt.config import load_recipe
from lrt.errors import LrtError
from lrt.workflows.run import Run as Trainer  # fit() also exports RUN/final, as `lrt train`

from _scale_helpers import REPO, max_diff, scores, windows


def tiny_overrides(model_dir, data_dir, out, steps: int = 2) -> list[str]:
    return [
        f"model.name_or_path={model_dir}", "model.attn_implementation=sdpa", f"data.train={data_dir / 'train.jsonl'}",
        f"data.eval={data_dir / 'eval.jsonl'}", "data.max_length=512", "prompt.max_passage_tokens=16",
        f"train.max_steps={steps}", "train.per_device_batch_size=2", "train.grad_accum=1", "train.warmup_steps=1",
        "train.resume=none", "eval.every=null", "eval.select_best=false", "eval.at_start=false", "eval.batch_size=4",
        f"output_dir={out}", "log.wandb=disabled", "log.progress=false",
        "eval.qrels=null",  # the recipe's DL19 qrels do not judge the tiny eval set
    ]


def test_lora_recipe_trains_adapters_and_exports_exactly(tiny_model_dir, tiny_data, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    out = tmp_path / "lora"
    ov = tiny_overrides(tiny_model_dir, tiny_data, out) + [
        "model.dtype=float32", "train.precision=fp32", "train.lr=2e-2",  # fp32: the 1e-5 export check is meaningful
        "model.lora.dropout=0.0", "model.lora.r=8",
    ]
    r = load_recipe(REPO / "recipes/first-mistral-7b-lora.yaml", ov)
    assert r.model.gradient_checkpointing and r.model.neftune_alpha == 5.0 and r.model.lora.target_modules == "all-linear"
    t = Trainer(r)
    model = t.hf_model
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    layer = model.get_base_model().model.layers[0]
    assert layer.gradient_checkpointing and layer._gradient_checkpointing_func.keywords["use_reentrant"] is False
    assert model.get_base_model()._require_grads_hooks  # input grads under LoRA + checkpointing
    # NEFTune: noisy embeddings in training mode only
    emb, ids = model.get_input_embeddings(), torch.tensor([[5, 6, 7, 8]])
    model.train()
    assert not torch.equal(emb(ids), emb(ids))
    model.eval()
    assert torch.equal(emb(ids), emb(ids))
    model.train()

    res = t.fit()
    assert res.steps == 2 and all(torch.isfinite(torch.tensor(h["loss"])) for h in res.history)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters() if n in before)  # base frozen
    # a LoRA run always ends with a (small) checkpoint, holding the adapter in PEFT format
    cp = out / "checkpoints" / "step-0000002"
    assert (cp / "trainer_state.json").exists() and (cp / "adapter" / "adapter_model.safetensors").exists()

    items = windows(t.eval_examples)
    trained = scores(model, t, items)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    assert max_diff(scores(base, t, items), trained) > 1e-3  # the adapter matters, so equality below means something

    final = out / "final"
    for f in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "lrt_reranker.json", "README.md"):
        assert (final / f).exists(), f
    card = (final / "README.md").read_text()
    assert "LoRA r=8" in card and "train.jsonl" in card and "loss/ranknet" in card and "max_steps: 2" in card
    merged = AutoModelForCausalLM.from_pretrained(final, dtype=torch.float32)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert max_diff(scores(merged, t, items), trained) <= 1e-5

    adapter = load_file(str(final / "adapter" / "adapter_model.safetensors"))
    assert len(adapter) == len(trainable) and all(v.numel() > 0 for v in adapter.values())
    assert any(float(v.abs().max()) > 0 for k, v in adapter.items() if "lora_B" in k)  # B starts at 0: it trained
    fresh = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    via_adapter = PeftModel.from_pretrained(fresh, final / "adapter")
    assert max_diff(scores(via_adapter, t, items), trained) <= 1e-5

    # `lrt export RUN_DIR --out DIR` (merged, and --adapter-only) from the last checkpoint
    from lrt.export_cli import main as export_main

    assert export_main([str(out), "--out", str(tmp_path / "exp")]) == 0
    assert max_diff(scores(AutoModelForCausalLM.from_pretrained(tmp_path / "exp"), t, items), trained) <= 1e-5
    assert export_main([str(out), "--out", str(tmp_path / "exp_adapter"), "--adapter-only"]) == 0
    again = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "exp_adapter")
    assert max_diff(scores(again, t, items), trained) <= 1e-5
    from lrt.rerank import Reranker

    assert Reranker.from_pretrained(tmp_path / "exp").window == 20  # lrt_reranker.json travels with the export


def test_qlora_recipe_trains_4bit_and_exports_through_unquantised_reload(tiny_model_dir, tiny_data, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lrt.export import export_run, merge_lora
    from lrt.export_cli import main as export_main

    out = tmp_path / "qlora"
    ov = tiny_overrides(tiny_model_dir, tiny_data, out) + ["train.lr=1e-2", "model.lora.dropout=0.0", "model.lora.r=8"]
    r = load_recipe(REPO / "recipes/first-mistral-7b-qlora.yaml", ov)
    assert r.model.quantization.bits == 4 and r.model.quantization.quant_type == "nf4" and r.model.quantization.double_quant
    t = Trainer(r)
    model = t.hf_model
    assert any(type(m).__name__ == "Linear4bit" for m in model.modules())
    res = t.fit()
    assert res.steps == 2 and all(torch.isfinite(torch.tensor(h["loss"])) for h in res.history)
    final = out / "final"
    assert (final / "adapter" / "adapter_model.safetensors").exists() and (final / "NOT_MERGED.txt").exists()
    assert not (final / "model.safetensors").exists()

    with pytest.raises(LrtError, match="refusing to merge LoRA into a quantised"):
        merge_lora(model)
    with pytest.raises(LrtError, match="reloads the base unquantised"):
        export_run(out, tmp_path / "refused", as_trained=True)
    # the CLI path: the same refusal is one clear line, exit code 2 (no traceback)
    from lrt.cli import main as cli_main

    assert cli_main(["export", str(out), "--out", str(tmp_path / "refused2"), "--as-trained"]) == 2
    assert "refusing to merge LoRA into a quantised" in capsys.readouterr().err

    assert export_main([str(out), "--out", str(tmp_path / "merged"), "--dtype", "float32"]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    assert not any(type(m).__name__ == "Linear4bit" for m in merged.modules())
    # merged == fp32 base + the trained adapter (exactly); vs the 4-bit model only up to quantisation error
    items = windows(t.eval_examples)
    ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32),
                                    final / "adapter")
    assert max_diff(scores(merged, t, items), scores(ref, t, items)) <= 1e-5
    assert max_diff(scores(merged, t, items), scores(model, t, items)) < 0.5
