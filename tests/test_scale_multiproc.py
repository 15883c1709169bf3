"""2-process CPU (gloo) training: DDP, ZeRO-2 and ZeRO-3, each with full fine-tuning and LoRA.

Every run is compared with a 1-process run of the same global batch (4 lists = 1 x 2 accumulation x
2 ranks vs 1 x 4 accumulation x 1 rank): loss trace, LR trace and final weights. The runs go through
every launcher the README documents (`lrt train --nproc-per-node`, launch/torchrun.sh,
launch/deepspeed.sh, plain torchrun) and every DeepSpeed JSON in launch/. The full-fine-tuning
ZeRO-2 and ZeRO-3 runs are SIGKILLed (whole process group) after a checkpoint and resumed.

Measured on this 2-core CPU machine (fp32): 2-process traces agree with 1 process to ~1e-8
relative, final weights to ~1e-7; a resumed ZeRO run repeats the killed run's steps bitwise.
The asserted tolerances below leave a margin over that.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
import yaml

from _scale_helpers import last_per_step, metrics, run, run_until_fault, safetensors_weights

pytestmark = pytest.mark.slow

TRACE_RTOL = 1e-5  # loss terms, 2 processes (DDP / ZeRO-2 / ZeRO-3) vs 1 process
GRAD_NORM_RTOL = 1e-4
WEIGHT_ATOL = 1e-5  # final weights (max abs difference), 2 processes vs 1 process
LORA = "model.lora={r: 4, alpha: 8, dropout: 0.0}"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "lrt.cli", "train"]
STEPS, LR, WARMUP = 4, 1e-3, 1


@pytest.fixture(scope="module")
def recipe(tiny_model_dir, tiny_data, tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("scale") / "recipe.yaml"
    p.write_text(yaml.safe_dump({
        "model": {"name_or_path": str(tiny_model_dir)},
        "data": {"train": str(tiny_data / "train.jsonl"), "max_length": 512},
        "prompt": {"preset": "compact", "max_passage_tokens": 24},
        "train": {"max_steps": STEPS, "per_device_batch_size": 1, "grad_accum": 2, "lr": LR, "warmup_steps": WARMUP,
                  "log_every": 1, "save_every": 2, "keep_last": 2},
        "eval": {"at_start": False, "at_end": False},
        "log": {"progress": False},
        "output_dir": "unused",
    }))
    return p


@pytest.fixture(scope="module")
def reference(recipe, tmp_path_factory) -> dict[str, Path]:
    """1-process runs (in this pytest process) with the same global batch: 1 x 4 accumulation."""
    from lrt.config import load_recipe
    from lrt.workflows.run import train

    out = {}
    for name, extra in (("full", []), ("lora", [LORA])):
        d = tmp_path_factory.mktemp("ref") / name
        train(load_recipe(recipe, [f"output_dir={d}", "train.grad_accum=4", *extra]))
        out[name] = d
    return out


def expected_lrs() -> list[float]:
    """Linear warmup (1 step) then cosine to 0: the LR each optimizer step must have used."""
    return [LR * ((s + 1) / WARMUP if s < WARMUP else 0.5 * (1 + math.cos(math.pi * (s - WARMUP) / (STEPS - WARMUP))))
            for s in range(STEPS)]


def assert_matches_reference(run_dir: Path, ref_dir: Path) -> None:
    got, want = last_per_step(metrics(run_dir)), metrics(ref_dir)
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    for g, w in zip(got, want):
        for k in ("loss", "loss/lm", "loss/ranknet"):
            assert g[k] == pytest.approx(w[k], rel=TRACE_RTOL), (g["step"], k)
        assert g["grad_norm"] == pytest.approx(w["grad_norm"], rel=GRAD_NORM_RTOL)
        assert g["lists"] == w["lists"] == 4
    assert [r["lr"] for r in got] == pytest.approx(expected_lrs(), rel=1e-12, abs=1e-15)  # stepped once per step
    a, b = safetensors_weights(run_dir / "final/model.safetensors"), safetensors_weights(ref_dir / "final/model.safetensors")
    assert a.keys() == b.keys()
    w_diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    rel = max(abs(g[k] - w[k]) / abs(w[k]) for g, w in zip(got, want) for k in ("loss", "loss/lm", "loss/ranknet"))
    print(f"MEASURED {run_dir.parent.name}/{run_dir.name} vs 1 process: trace rel {rel:.2e}, weights max abs {w_diff:.2e}")
    assert w_diff <= WEIGHT_ATOL


def assert_resumed_bitwise(run_dir: Path, first: list[dict], killed_after: int, resumed_from: int) -> None:
    """Steps run both before the kill (`first`: the records then) and after the resume produced the
    same floats; the resume cut metrics.jsonl back to its step, so every step appears once."""
    recs = metrics(run_dir)
    assert [r["step"] for r in first] == list(range(1, killed_after + 1))
    assert [r["step"] for r in recs] == list(range(1, STEPS + 1))
    keys = ("loss", "loss/lm", "loss/ranknet", "lr", "grad_norm")
    again = recs[resumed_from:killed_after]
    assert [[r[k] for k in keys] for r in again] == [[r[k] for k in keys] for r in first[resumed_from:]]


def assert_adapter_nonempty(run_dir: Path) -> None:
    ad = safetensors_weights(run_dir / "final/adapter/adapter_model.safetensors")
    assert len(ad) == 28 and all(v.numel() > 0 for v in ad.values())  # 2 layers x 7 linears x (A, B)
    assert all(float(v.abs().max()) > 0 for k, v in ad.items() if "lora_B" in k)


def state(run_dir: Path, step: int) -> dict:
    return json.loads((run_dir / f"checkpoints/step-{step:07d}/trainer_state.json").read_text())


def assert_evaluated(run_dir: Path) -> None:
    ev = [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "eval/nDCG@10_candidates" in r]
    assert len(ev) == 1 and ev[0]["eval/queries"] == 6 and 0 <= ev[0]["eval/nDCG@10_candidates"] <= 1


def test_ddp_full_and_lora(recipe, reference, tiny_data, tmp_path):
    full, lora = tmp_path / "full", tmp_path / "lora"
    evals = [f"data.eval={tiny_data / 'eval.jsonl'}", "eval.at_end=true"]  # queries sharded over the ranks
    run([sys.executable, "-m", "lrt.cli", "train", str(recipe), f"output_dir={full}", *evals, "--nproc-per-node", "2"])
    assert_matches_reference(full, reference["full"])
    assert_evaluated(full)
    assert state(full, STEPS)["backend"] == "ddp" and state(full, STEPS)["world_size"] == 2
    assert (full / f"checkpoints/step-{STEPS:07d}/rng-rank1.pt").exists()
    run(["bash", "launch/torchrun.sh", "2", str(recipe), f"output_dir={lora}", LORA])
    assert_matches_reference(lora, reference["lora"])
    assert_adapter_nonempty(lora)


def test_zero2_full_killed_and_resumed_and_lora(recipe, reference, tmp_path):
    from lrt.export import export_run

    full, lora = tmp_path / "full", tmp_path / "lora"
    ds = "train.deepspeed=launch/ds_zero2.json"
    run_until_fault(TORCHRUN + [str(recipe), f"output_dir={full}", ds], "pause:after_step:3")
    assert (full / "checkpoints/latest").read_text() == "step-0000002"
    first = metrics(full)
    run(["bash", "launch/deepspeed.sh", "2", str(recipe), f"output_dir={full}", ds, "train.resume=auto"],
        MASTER_PORT=str(_free_port()))
    assert_resumed_bitwise(full, first, killed_after=3, resumed_from=2)
    assert_matches_reference(full, reference["full"])
    assert state(full, STEPS)["zero_stage"] == 2
    # `lrt export` consolidates the ZeRO-2 checkpoint (zero_to_fp32, RerankModule's `model.` prefix stripped)
    export_run(full, tmp_path / "exp")
    a, b = safetensors_weights(tmp_path / "exp/model.safetensors"), safetensors_weights(full / "final/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    run(TORCHRUN + [str(recipe), f"output_dir={lora}", ds, LORA])
    assert_matches_reference(lora, reference["lora"])
    assert_adapter_nonempty(lora)


def test_zero3_full_killed_in_save_and_resumed_and_lora_offload(recipe, reference, tiny_data, tmp_path):
    from lrt.export import export_run

    full, lora = tmp_path / "full", tmp_path / "lora"
    ds = "train.deepspeed=launch/ds_zero3.json"
    run_until_fault(TORCHRUN + [str(recipe), f"output_dir={full}", ds], f"pause:in_save:{STEPS}")
    assert (full / "checkpoints/latest").read_text() == "step-0000002"
    assert (full / f"checkpoints/.tmp-step-{STEPS:07d}/ds").is_dir()  # half-written save, ignored on resume
    first = metrics(full)
    run(TORCHRUN + [str(recipe), f"output_dir={full}", ds, "train.resume=auto"])
    assert_resumed_bitwise(full, first, killed_after=STEPS, resumed_from=2)
    assert_matches_reference(full, reference["full"])
    st = state(full, STEPS)
    assert st["zero_stage"] == 3 and st["loaded_partitioned"]  # HfDeepSpeedConfig was active before from_pretrained

    evals = [f"data.eval={tiny_data / 'eval.jsonl'}", "eval.at_end=true"]  # every rank runs every query
    run(TORCHRUN + [str(recipe), f"output_dir={lora}", "train.deepspeed=launch/ds_zero3_offload.json", LORA, *evals])
    assert_matches_reference(lora, reference["lora"])
    assert_evaluated(lora)
    assert_adapter_nonempty(lora)  # gathered: ZeRO-3's live LoRA tensors are empty partitions
    assert (lora / f"checkpoints/step-{STEPS:07d}/adapter/adapter_model.safetensors").exists()
    export_run(lora, tmp_path / "exp")
    a, b = safetensors_weights(tmp_path / "exp/model.safetensors"), safetensors_weights(lora / "final/model.safetensors")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6


def test_zero2_resume_from_two_processes_on_one(recipe, reference, tmp_path):
    """A 2-process ZeRO-2 checkpoint resumes on 1 process through DeepSpeed's universal checkpoint
    (`ds_to_universal`), with the global batch kept (1 x 2 x 2 -> 1 x 4 x 1): the resumed steps
    match the 1-process reference run like an uninterrupted 2-process run does."""
    out = tmp_path / "full"
    ds = "train.deepspeed=launch/ds_zero2.json"
    run_until_fault(TORCHRUN + [str(recipe), f"output_dir={out}", ds], "pause:after_step:3")
    assert (out / "checkpoints/latest").read_text() == "step-0000002"
    p = run([sys.executable, "-m", "lrt.cli", "train", str(recipe), f"output_dir={out}", ds, "train.grad_accum=4",
             "train.resume=auto"])
    assert "was written by 2 processes, this run has 1" in p.stderr
    assert (out / "checkpoints/universal/step-0000002/ds/zero").is_dir()
    assert_matches_reference(out, reference["full"])
    assert state(out, STEPS)["world_size"] == 1 and state(out, STEPS)["zero_stage"] == 2


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
