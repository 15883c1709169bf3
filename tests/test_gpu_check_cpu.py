"""The GPU checks, on the CPU: every case body of tests/test_gpu_paths.py runs here on a tiny preset with
the real vocabulary (so the code the GPU will run has run), `pytest -m gpu` skips each test with its
reason, and scripts/gpu_check.sh runs end to end, skips every CUDA part by its own check, exits 3 with
"no CUDA device" and writes its summary.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
import torch

import _gpu_cases as cases

REPO = cases.REPO
no_cuda_only = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the no-CUDA behaviour "
                                  "is checked on machines without one")


def test_gpu_case_bf16_step_on_cpu(tmp_path):
    r = cases.bf16_vs_fp32(tmp_path, "tiny-qwen2", seq=512)
    assert r["weight_dtype"] == "torch.bfloat16" and r["scores_dtype"] == "torch.float32"
    assert set(r["loss_term_dtypes"].values()) == {"torch.float32"} and set(r["loss_term_dtypes"]) == {"lm", "ranknet"}
    assert r["candidates"] == 20 and r["min_distinct_scores_per_list"] == 20 and r["train_mode"]
    assert 0 < r["loss_rel_diff"] < 2e-2  # bf16 differs from fp32, within bf16 tolerance


def test_gpu_case_attention_padding_on_cpu(tmp_path):
    r = cases.attention_scores(tmp_path, "tiny-qwen2", impls=("sdpa", "eager"), n_lists=4)
    assert r["implementations_used"] == {"sdpa": "sdpa", "eager": "eager"} and r["score_dtype"] == "torch.float32"
    assert r["prompt_lengths"][0] < r["prompt_lengths"][1]
    diffs = {k: v for k, v in r.items() if k.startswith("max_abs_diff_")}
    assert len(diffs) == 4 and all(v < 5e-2 for v in diffs.values()), r


def test_gpu_case_checkpointing_on_cpu(tmp_path):
    r = cases.checkpointing_memory(tmp_path, "tiny-llama", seqs=(512,))
    off, on = r["runs"]
    assert (off["grad_ckpt"], on["grad_ckpt"]) == (False, True) and on["layer_checkpointed"] and not off["layer_checkpointed"]
    assert on["saved_activation_mb"] < 0.5 * off["saved_activation_mb"] and off["peak_step_mb"] is None  # no CUDA
    assert on["loss"] == pytest.approx(off["loss"], rel=1e-6)


def test_gpu_case_liger_falls_back_to_chunked_on_cpu(caplog):
    with caplog.at_level(logging.WARNING, logger="lrt"):
        r = cases.liger_vs_chunked("tiny-qwen2", targets=128, seq=256)
    assert r["liger"]["path_used"] == r["torch"]["path_used"] == "chunked"  # liger needs CUDA
    assert "kernel=liger needs CUDA" in caplog.text
    assert r["loss_rel_diff"] == 0 and r["grad_hidden_rel_diff"] == 0 and r["vocab"] == 151_936


def test_gpu_case_qlora_roundtrip_on_cpu(tmp_path):
    r = cases.qlora_roundtrip(tmp_path, "tiny-qwen2")
    assert r["linear4bit_modules"] > 0 and r["adapter_saved"] and r["not_merged_note"] and r["export_rc"] == 0
    assert r["merged_vs_adapter_max_abs"] < 1e-4 and r["merged_vs_adapter_same_order"]
    assert r["adapter_vs_untrained_base_max_abs"] > 10 * r["merged_vs_adapter_max_abs"]


@pytest.mark.slow  # three fresh bench workers, ~25 s
def test_gpu_case_bench_argv_runs_on_cpu():
    (rec,) = cases.run_bench(cases.bench_argv("tiny-qwen2", seq=512, settings="first", steps=1), timeout=600)
    assert rec["device"] == "cpu" and rec["precision"] == "bf16" and rec["mem_metric"] == "step_mb"
    assert rec["vocab"] == 151_936 and rec["loss_rel_diff"] < 2e-2 and "lrt_cuda_peak_mb" not in rec


def test_bench_throughput_refuses_cpu_and_smoke_runs(tmp_path, capsys):
    from lrt.cli import main

    assert main(["bench", "throughput", "--arch", "tiny-llama"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no CUDA device") and "--allow-cpu" in err
    out = tmp_path / "tp.json"
    assert main(["bench", "throughput", "--arch", "tiny-llama", "--seq", "512", "--steps", "1", "--warmup", "1",
                 "--allow-cpu", "--json", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["tokens_per_step"] > 400 and rec["target_tokens_per_step"] > 20 and rec["peak_tflops"] == 989.5
    assert rec["flops_per_step"] > 6 * rec["decoder_params"] * rec["tokens_per_step"]  # + attention + head
    assert rec["reference"]["tokens_per_s_per_gpu"] == 5762


@pytest.mark.slow
def test_gpu_case_zero3_on_cpu(tmp_path):
    from lrt.train.loop import Trainer

    weights = cases.save_weights(tmp_path, "tiny-qwen2")
    plain = Trainer(cases.gpu_recipe(tmp_path / "plain", "tiny-qwen2", name_or_path=weights, steps=2)).train_step()
    p, metrics = cases.run_train_cli(cases.zero3_recipe(tmp_path / "zero3", "tiny-qwen2", weights), timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads((tmp_path / "zero3" / "run" / "run_summary.json").read_text())["zero_stage"] == 3
    assert len(metrics) == 2 and metrics[0]["loss"] == pytest.approx(plain["loss"], rel=1e-3)


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(REPO))


@no_cuda_only
def test_pytest_m_gpu_skips_every_check_with_its_reason():
    p = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-m", "gpu", "tests/test_gpu_paths.py",
                        "-rs", "-q"], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:]
    skips = [line for line in p.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(skips) == 7 and p.stdout.splitlines()[-1].startswith("7 skipped in") and "passed" not in p.stdout
    assert all("needs a CUDA device: torch.cuda.is_available() is False" in s for s in skips), skips


@no_cuda_only
def test_gpu_check_script_without_cuda(tmp_path):
    out = tmp_path / "gpu-check"
    p = subprocess.run(["bash", "scripts/gpu_check.sh", str(out)], cwd=REPO, env=_env(), capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 3, p.stdout[-3000:] + p.stderr[-3000:]
    assert "no CUDA device: every CUDA part was skipped" in p.stdout
    s = json.loads((out / "summary.json").read_text())
    assert s["cuda"] is False and s["verdict"] == "no CUDA device: every CUDA part skipped"
    status = {x["part"]: x for x in s["parts"]}
    assert status["probe"]["status"] == "ok" and "no CUDA device" in status["probe"]["note"]
    for name in ("install", "gpu-tests", "throughput"):  # each skipped by its own check, its reason given
        assert status[name]["status"] == "skipped" and "CUDA" in status[name]["note"], status[name]
    assert len(s["tests"]) == 7 and all(t["outcome"] == "skipped" and "needs a CUDA device" in t["detail"]
                                        for t in s["tests"])
    assert s["figures"] == {}  # nothing measured, nothing made up
    md = (out / "summary.md").read_text()
    assert "**No CUDA device**" in md and "not yet measured" in md and "5,762" in md and "989.5" in md
    for part in ("probe", "install", "gpu-tests", "throughput"):
        assert f"[gpu_check] {part}" in p.stdout


@pytest.mark.slow  # ~13 s: runs the recorded cases
def test_gpu_summary_renders_recorded_figures(tmp_path, monkeypatch):
    """The summary writer on figures the cases really produced (here on CPU), so a KeyError in it cannot
    first show at the end of a GPU slot; a check that recorded nothing still reads "not yet measured"."""
    from lrt.cli import main

    figs = tmp_path / "out" / "figures"
    monkeypatch.setenv("LRT_GPU_FIGURES", str(figs))
    cases.record("bf16_step", cases.bf16_vs_fp32(tmp_path / "b", "tiny-qwen2", seq=512))
    cases.record("grad_ckpt_memory", cases.checkpointing_memory(tmp_path / "g", "tiny-llama", seqs=(4096,)))
    cases.record("liger_vs_chunked", cases.liger_vs_chunked("tiny-qwen2", targets=64, seq=128))
    assert main(["bench", "throughput", "--arch", "tiny-llama", "--seq", "512", "--steps", "1", "--warmup", "1",
                 "--allow-cpu", "--json", str(figs / "throughput.json")]) == 0
    p = subprocess.run([sys.executable, "scripts/gpu_summary.py", str(tmp_path / "out"), "12"], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert set(s["figures"]) == {"bf16_step", "grad_ckpt_memory", "liger_vs_chunked", "throughput"}
    md = (tmp_path / "out" / "summary.md").read_text()
    tp = s["figures"]["throughput"]
    assert f"| tiny-llama ({tp['params'] / 1e9:.2f}B) | 512 x 1 | sdpa | {tp['tokens_per_s_per_gpu']:,.0f} |" in md
    assert f"{s['figures']['bf16_step']['loss_rel_diff']:.3g}" in md
    assert "| 16384 | not yet measured | not yet measured |" in md  # only 4096 was run
    assert "| - | not yet measured |" in md  # no bench record
