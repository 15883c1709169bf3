"""`lrt bench throughput`: tokens/s per GPU and model-FLOPs utilisation (MFU) of lrt's FIRST training
step on a real-size model built from its config (random weights, the real vocabulary: nothing to
download), to set beside published figures (torchtitan, Llama 3.1 8B on 8xH100 with FSDP: about
5,762 tokens/s/GPU, 33-39 % MFU).

The step timed is `Trainer.train_step()`, the function `lrt train` runs (data, forward, lm + ranknet
loss, backward, clipping, AdamW, scheduler), in the shipped GPU recipes' precision: bf16 weights and
bf16 autocast, flash_attention_2 where flash-attn is installed (else sdpa; the record says which).

MFU = model FLOPs per second / the chip's dense bf16 peak (`--peak-tflops`, default 989.5: the
H100/H200 SXM datasheet figure, the one torchtitan divides by). Model FLOPs per step follow
torchtitan's count (6 x non-embedding parameters per token + 12 x layers x hidden x seq per token
for attention, no causal discount), except that the LM head counts only where lrt applies it: the
target tokens of the lm loss (a FIRST step never projects the 4k prompt positions onto the vocabulary).

This module also holds the model presets and the recipe builder the GPU checks share
(tests/test_gpu_paths.py, scripts/gpu_check.sh), so the figures and the tests build the same things.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Public configs of the models lrt fine-tunes, without weights (random init from the config). The
# tiny-* presets keep the real vocabulary on a 2-layer body, so the CPU runs of the GPU checks
# exercise the same shapes of the LM head and the same code.
ARCHS: dict[str, dict[str, Any]] = {
    "qwen2-0.5b": dict(model_type="qwen2", vocab_size=151_936, hidden_size=896, intermediate_size=4864,
                       num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True),
    "qwen2-1.5b": dict(model_type="qwen2", vocab_size=151_936, hidden_size=1536, intermediate_size=8960,
                       num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True),
    "llama3.2-1b": dict(model_type="llama", vocab_size=128_256, hidden_size=2048, intermediate_size=8192,
                        num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=True),
    "llama3.2-3b": dict(model_type="llama", vocab_size=128_256, hidden_size=3072, intermediate_size=8192,
                        num_hidden_layers=28, num_attention_heads=24, num_key_value_heads=8, tie_word_embeddings=True),
    "llama3.1-8b": dict(model_type="llama", vocab_size=128_256, hidden_size=4096, intermediate_size=14_336,
                        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False),
    "tiny-qwen2": dict(model_type="qwen2", vocab_size=151_936, hidden_size=64, intermediate_size=128,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
    "tiny-llama": dict(model_type="llama", vocab_size=128_256, hidden_size=64, intermediate_size=128,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
}
H100_H200_BF16_DENSE_TFLOPS = 989.5  # NVIDIA datasheet, SXM, dense (no sparsity)
TORCHTITAN_LLAMA31_8B = {"tokens_per_s_per_gpu": 5762, "mfu_pct": "33-39", "setup": "Llama 3.1 8B, 8xH100, FSDP"}
DS_ZERO3 = "lrt:resources/launch/ds_zero3.json"


def config_dir(out: Path, arch: str, seq: int) -> str:
    """A model directory holding the preset's config and lrt's tiny chat tokenizer (token ids < 600
    of the real vocabulary); recipes load it with `model.init: from_config`."""
    from transformers import AutoConfig

    from lrt.testing.tiny import build_tokenizer

    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose from {sorted(ARCHS)}")
    spec = dict(ARCHS[arch])
    tok = build_tokenizer("chatml")
    cfg = AutoConfig.for_model(spec.pop("model_type"), **spec, max_position_embeddings=max(seq, 4096),
                               pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)
    out.mkdir(parents=True, exist_ok=True)
    cfg.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def gpu_recipe(work: Path, arch: str, *, seq: int = 1024, batch: int = 1, steps: int = 4, precision: str = "bf16",
               attn: str = "sdpa", gc: bool = False, name_or_path: str | None = None, lora: dict | None = None,
               quant: dict | None = None, deepspeed: str | None = None, padding_side: str = "right",
               examples: list | None = None, n_ids: int = 20, save_final: bool = False, log_every: int = 10**6,
               lm_params: dict | None = None, lr: float = 1e-5) -> Any:
    """A FIRST recipe (first_alpha prompt, lm + ranknet) over listwise data that fills `seq` tokens per
    list, on the preset built from its config (or `name_or_path`: saved weights, `init: pretrained`).
    bf16 means what the shipped GPU recipes do: bf16 weights (`model.dtype`) and `train.precision`."""
    from lrt.bench.train_step import bench_examples
    from lrt.config import recipe_from_dict
    from lrt.data.schema import write_examples

    work.mkdir(parents=True, exist_ok=True)
    rows = examples if examples is not None else bench_examples(batch * (steps + 1), n_ids, seq)
    write_examples(rows, work / "train.jsonl")
    model: dict[str, Any] = {
        "name_or_path": name_or_path or config_dir(work / "config", arch, seq),
        "init": "pretrained" if name_or_path else "from_config",
        "dtype": "bfloat16" if precision == "bf16" else "float32", "attn_implementation": attn,
        "gradient_checkpointing": gc, "lora": lora, "quantization": quant,
    }
    raw = {
        "model": model,
        "data": {"train": str(work / "train.jsonl"), "max_length": seq, "window": n_ids, "padding_side": padding_side},
        "prompt": {"preset": "first_alpha", "max_passage_tokens": seq},
        "loss": [{"name": "lm", "weight": 1.0, "params": lm_params or {}}, {"name": "ranknet", "weight": 1.0}],
        "train": {"max_steps": steps, "per_device_batch_size": batch, "grad_accum": 1, "lr": lr, "warmup_steps": 0,
                  "max_grad_norm": 1.0, "save_final": save_final, "log_every": log_every, "seed": 0,
                  "precision": precision, "deepspeed": deepspeed},
        "eval": {"at_start": False, "at_end": False},
        "log": {"progress": False},
        "output_dir": str(work / "run"),
    }
    return recipe_from_dict(raw, [])


def model_flops_per_step(model: Any, seq: int, tokens: int, target_tokens: int) -> dict[str, float]:
    """torchtitan's count for the decoder (6 N + 12 L d T per token, N without the embedding and
    the LM head), plus 6 V d per lm-loss target token for the head lrt actually applies."""
    from lrt.scoring import decoder_and_head

    cfg = model.config
    decoder, head = decoder_and_head(model)
    emb = decoder.get_input_embeddings().weight
    n_decoder = sum(p.numel() for p in decoder.parameters()) - emb.numel()
    V, d = head.weight.shape
    attn = 12 * cfg.num_hidden_layers * cfg.hidden_size * seq
    dec = tokens * (6 * n_decoder + attn)
    head_flops = 6 * V * d * target_tokens
    return {"decoder_params": float(n_decoder), "flops_per_step": float(dec + head_flops),
            "head_flops_share": head_flops / (dec + head_flops)}


def run_throughput(arch: str, seq: int, batch: int, steps: int, warmup: int, peak_tflops: float,
                   attn: str, work: Path) -> dict[str, Any]:
    """Build the Trainer, run warm-up steps, time `steps` more with a device sync around each."""
    import torch

    from lrt.train.loop import Trainer

    cuda = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    t0 = time.perf_counter()
    trainer = Trainer(gpu_recipe(work, arch, seq=seq, batch=batch, steps=warmup + steps, attn=attn))
    build_s = time.perf_counter() - t0
    times, tokens, targets = [], [], []
    for i in range(warmup + steps):
        (mb,) = trainer.batches.step(i)
        sync()
        s0 = time.perf_counter()
        trainer.train_step()
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - s0)
            tokens.append(int(mb["attention_mask"].sum()))
            targets.append(int(mb["lm_targets"].numel()))
    step_s = statistics.median(times)
    fl = model_flops_per_step(trainer.hf_model, seq, int(statistics.median(tokens)), int(statistics.median(targets)))
    tps = statistics.median(tokens) / step_s
    mfu = fl["flops_per_step"] / step_s / (peak_tflops * 1e12)
    return {
        "bench": "throughput", "date": time.strftime("%Y-%m-%d"), "arch": arch, "seq": seq, "batch": batch,
        "device": str(trainer.env.device), "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "attn_implementation": trainer.hf_model.config._attn_implementation, "precision": trainer.r.train.precision,
        "params": sum(p.numel() for p in trainer.hf_model.parameters()), **fl,
        "tokens_per_step": int(statistics.median(tokens)), "target_tokens_per_step": int(statistics.median(targets)),
        "step_s": round(step_s, 5), "step_times_s": [round(t, 5) for t in times], "build_s": round(build_s, 1),
        "tokens_per_s_per_gpu": round(tps, 1), "mfu_pct": round(100 * mfu, 2), "peak_tflops": peak_tflops,
        "achieved_tflops": round(fl["flops_per_step"] / step_s / 1e12, 2),
        "cuda_peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "reference": TORCHTITAN_LLAMA31_8B,
    }


@dataclass
class Options:
    """`lrt bench throughput` flags (`lrt.cli.bench.throughput`)."""

    arch: str = "qwen2-1.5b"  # a key of ARCHS
    seq: int = 4096
    batch: int = 1  # lists per step (each of `seq` tokens)
    steps: int = 5  # timed steps
    warmup: int = 2
    attn: str = "auto"  # auto: flash_attention_2 when flash-attn and CUDA are there, else sdpa
    peak_tflops: float = H100_H200_BF16_DENSE_TFLOPS  # dense bf16 peak the MFU divides by
    json: str | None = None  # also write the record to this file
    allow_cpu: bool = False  # run on CPU too (a smoke run; its MFU means nothing)


def run(a: Options) -> int:
    """Time the step, print the JSON record and the one-line summary; 2 without CUDA (unless allow_cpu)."""
    import tempfile

    import torch

    if not torch.cuda.is_available() and not a.allow_cpu:
        print(f"error: no CUDA device (torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}): "
              "the throughput figure is a GPU measurement; pass --allow-cpu for a smoke run", file=sys.stderr)
        return 2
    attn = a.attn
    if attn == "auto":
        from transformers.utils import is_flash_attn_2_available

        attn = "flash_attention_2" if torch.cuda.is_available() and is_flash_attn_2_available() else "sdpa"
    with tempfile.TemporaryDirectory(prefix="lrt-throughput-") as tmp:
        rec = run_throughput(a.arch, a.seq, a.batch, a.steps, a.warmup, a.peak_tflops, attn, Path(tmp))
    print(json.dumps(rec), flush=True)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(rec, indent=1), encoding="utf-8")
    print(f"{rec['arch']} seq {rec['seq']} x {rec['batch']} on {rec['gpu'] or rec['device']} ({rec['attn_implementation']}): "
          f"{rec['tokens_per_s_per_gpu']:.0f} tokens/s/GPU, MFU {rec['mfu_pct']:.1f} % of {rec['peak_tflops']} TFLOP/s "
          f"(torchtitan Llama 3.1 8B on 8xH100: 5,762 tokens/s/GPU, 33-39 % MFU)", file=sys.stderr)
    return 0
