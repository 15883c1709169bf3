"""The CUDA paths of lrt, on models built from real configs (random weights, real vocabularies).

Run with `pytest -m gpu` (or scripts/gpu_check.sh, which also writes a summary). Without CUDA every
test here is skipped with its reason; an optional package that is missing (flash-attn, liger-kernel,
deepspeed, bitsandbytes) skips only the tests that need it, naming the package. The bodies live in
tests/_gpu_cases.py, which the CPU suite runs on tiny presets (tests/test_gpu_check_cpu.py). Each
test records its figures ($LRT_GPU_FIGURES) before asserting, so a failure still reports numbers.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os

import pytest
import torch

import _gpu_cases as cases

ARCH = os.environ.get("LRT_GPU_ARCH", "qwen2-0.5b")  # 0.5B Qwen2 shape, vocabulary 151,936
PIP = {"flash_attn": "flash-attn", "liger_kernel": "liger-kernel", "deepspeed": "deepspeed", "bitsandbytes": "bitsandbytes",
       "pydantic": "pydantic"}


def missing(*modules: str) -> str | None:
    """Why this machine cannot run a check: no CUDA first, then each absent package (None: it can)."""
    if not torch.cuda.is_available():
        return (f"needs a CUDA device: torch.cuda.is_available() is False (torch {torch.__version__}, "
                f"CUDA build {torch.version.cuda or 'none'})")
    if not torch.cuda.is_bf16_supported():
        return f"needs a GPU with bf16 ({torch.cuda.get_device_name(0)} has none)"
    absent = [PIP[m] for m in ("pydantic", *modules) if importlib.util.find_spec(m) is None]  # lrt's recipes need pydantic
    if absent:
        return (f"needs {', '.join(absent)} (not installed; pip install {' '.join(absent)}, or give scripts/gpu_check.sh "
                "a wheelhouse with LRT_WHEELHOUSE)")
    return None


def needs(*modules: str) -> pytest.MarkDecorator:
    reason = missing(*modules)
    return pytest.mark.skipif(reason is not None, reason=reason or "")


pytestmark = pytest.mark.gpu


@needs()
def test_gpu_bf16_step_fp32_scores_and_loss(tmp_path):
    r = cases.bf16_vs_fp32(tmp_path, ARCH, seq=1024)
    cases.record("bf16_step", r)
    assert r["device"].startswith("cuda") and r["weight_dtype"] == "torch.bfloat16" and r["hidden_dtype"] == "torch.bfloat16"
    assert r["scores_dtype"] == "torch.float32" and set(r["loss_term_dtypes"].values()) == {"torch.float32"}
    assert r["min_distinct_scores_per_list"] == r["candidates"]  # no exact ties among the 20 candidates
    assert r["train_mode"]
    assert r["loss_rel_diff"] < 2e-2, r  # bf16 keeps ~3 significant digits through 24 layers
    assert all(v < 5e-2 for v in r["terms_rel_diff"].values()), r


@needs("flash_attn")
def test_gpu_flash_attention_2_matches_sdpa_left_and_right_padding(tmp_path):
    r = cases.attention_scores(tmp_path, ARCH, impls=("sdpa", "flash_attention_2"))
    cases.record("flash_vs_sdpa", r)
    assert r["implementations_used"] == {"sdpa": "sdpa", "flash_attention_2": "flash_attention_2"}  # no silent fallback
    assert r["prompt_lengths"][0] < r["prompt_lengths"][1]  # uneven lists: the batches are padded
    for k, v in r.items():
        if k.startswith("max_abs_diff_"):
            assert v < 5e-2, (k, r)  # log-prob scores in fp32 from bf16 hidden states


@needs()
def test_gpu_gradient_checkpointing_peak_memory_4k_16k(tmp_path):
    r = cases.checkpointing_memory(tmp_path, ARCH, seqs=(4096, 16384))
    cases.record("grad_ckpt_memory", r)
    by = {(x["seq"], x["grad_ckpt"]): x for x in r["runs"]}
    for seq in (4096, 16384):
        off, on = by[(seq, False)], by[(seq, True)]
        assert on["layer_checkpointed"] and not off["layer_checkpointed"]
        assert on["peak_step_mb"] < off["peak_step_mb"], r
        assert math.isclose(on["loss"], off["loss"], rel_tol=1e-2)  # checkpointing recomputes, it changes nothing
    assert by[(16384, True)]["peak_step_mb"] < 0.5 * by[(16384, False)]["peak_step_mb"], r


@needs("liger_kernel")
def test_gpu_liger_fused_linear_ce_matches_chunked_lm_loss():
    r = cases.liger_vs_chunked(ARCH, targets=2048, seq=4096)
    cases.record("liger_vs_chunked", r)
    assert r["liger"]["path_used"] == "liger" and r["torch"]["path_used"] == "chunked"
    assert r["liger"]["loss_dtype"] == r["torch"]["loss_dtype"] == "torch.float32"
    assert r["loss_rel_diff"] < 1e-3, r
    assert r["grad_hidden_rel_diff"] < 2e-2 and r["grad_weight_rel_diff"] < 2e-2, r
    assert r["liger"]["peak_mb"] > 0 and r["torch"]["peak_mb"] > 0  # the memory of each, in the figures


@needs("bitsandbytes")
def test_gpu_qlora_4bit_step_adapter_and_merged_export(tmp_path):
    r = cases.qlora_roundtrip(tmp_path, ARCH)
    cases.record("qlora", r)
    assert r["linear4bit_modules"] > 0 and r["linear4bit_device"].startswith("cuda")
    assert all(math.isfinite(x) for x in r["losses"]) and r["adapter_saved"] and r["not_merged_note"]
    assert r["export_rc"] == 0
    assert r["merged_vs_adapter_max_abs"] < 1e-3 and r["merged_vs_adapter_same_order"], r  # same fp32 function
    assert r["adapter_vs_untrained_base_max_abs"] > r["merged_vs_adapter_max_abs"], r  # the adapter changed scores
    assert r["merged_vs_4bit_trained_max_abs"] < 0.5, r  # vs the 4-bit model: quantisation error only


@needs()
def test_gpu_bench_train_step_naive_vs_lrt_vs_floor():
    recs = cases.run_bench(cases.bench_argv(ARCH, seq=4096), timeout=300)
    cases.record("bench_train_step", {"records": recs})
    assert {r["setting"] for r in recs} == {"first", "fullrank"}
    for r in recs:
        assert r["device"].startswith("cuda") and r["mem_metric"] == "cuda_peak_mb" and r["precision"] == "bf16"
        assert r["mem_ratio"] < 1.0, r  # lrt's step needs less device memory than the full-logits step
        assert r["loss_rel_diff"] < 2e-2, r  # the same loss, computed without [B, T, V] logits
        assert r["train_mode"]


@needs("deepspeed")
def test_gpu_deepspeed_zero3_single_gpu(tmp_path):
    from lrt.train.loop import Trainer

    weights = cases.save_weights(tmp_path, ARCH)
    t = Trainer(cases.gpu_recipe(tmp_path / "plain", ARCH, name_or_path=weights, steps=2))
    plain = t.train_step()["loss"]
    del t
    cases.free()
    p, metrics = cases.run_train_cli(cases.zero3_recipe(tmp_path / "zero3", ARCH, weights), timeout=300)
    losses = [m["loss"] for m in metrics if "loss" in m]
    r = {"rc": p.returncode, "losses": losses, "plain_bf16_first_loss": plain, "stderr_tail": p.stderr[-1500:]}
    if p.returncode == 0:
        r["fused_adam"] = cases.fused_adam_in_subprocess(timeout=240)
    cases.record("deepspeed_zero3", r)
    assert p.returncode == 0, p.stderr[-4000:]
    assert json.loads((tmp_path / "zero3" / "run" / "run_summary.json").read_text())["zero_stage"] == 3
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert abs(losses[0] - plain) / abs(plain) < 3e-2, r  # step 1: the same weights, batch and loss as without DeepSpeed
    assert r["fused_adam"]["moved"] > 0 and r["fused_adam"]["max_abs_diff"] < 1e-5, r
