"""Kill-and-resume, single process, CPU fp32: bitwise.

The run is SIGKILLed from outside while it is *inside* the save of step 4 (the tmp dir holds the
weights and optimizer but no trainer_state.json), after step 2's checkpoint completed. Resuming
with `train.resume=auto` must ignore the half-written save, restart from step 2, and reproduce the
uninterrupted run exactly: the same loss / LR / grad-norm floats and the same final weights.
"""
from __future__ import annotations

import json
import sys

import pytest
import torch
import yaml

from _scale_helpers import metrics, run, run_until_fault, safetensors_weights


def write_recipe(path, model_dir, data_dir) -> None:
    path.write_text(yaml.safe_dump({
        "model": {"name_or_path": str(model_dir)},
        "data": {"train": str(data_dir / "train.jsonl"), "max_length": 512},
        "prompt": {"preset": "compact", "max_passage_tokens": 24},
        "train": {"max_steps": 6, "per_device_batch_size": 2, "grad_accum": 2, "lr": 1e-3, "warmup_steps": 2,
                  "log_every": 1, "save_every": 2, "keep_last": 2},
        "eval": {"at_start": False, "at_end": False},
        "log": {"progress": False},
        "output_dir": "unused",
    }))


@pytest.mark.slow  # ~24 s
def test_sigkill_during_save_then_resume_is_bitwise(tiny_model_dir, tiny_data, tmp_path):
    recipe = tmp_path / "r.yaml"
    write_recipe(recipe, tiny_model_dir, tiny_data)
    lrt = [sys.executable, "-m", "lrt.cli", "train", str(recipe)]
    ref, b = tmp_path / "uninterrupted", tmp_path / "killed"
    run(lrt + [f"output_dir={ref}"])

    log = run_until_fault(lrt + [f"output_dir={b}"], "pause:in_save:4")
    assert "LRT_FAULT: pause at in_save of step 4" in log
    ck = b / "checkpoints"
    assert (ck / "latest").read_text() == "step-0000002" and (ck / "step-0000002/trainer_state.json").exists()
    half = ck / ".tmp-step-0000004"
    assert (half / "trainable.safetensors").exists() and not (half / "trainer_state.json").exists()
    assert not (ck / "step-0000004").exists()
    assert [r["step"] for r in metrics(b)] == [1, 2, 3, 4]

    run(lrt + [f"output_dir={b}", "train.resume=auto"])
    recs = metrics(b)
    # resumed at step 2: the killed run's records of steps 3-4 are dropped, then trained again
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5, 6]
    keys = ("loss", "loss/lm", "loss/ranknet", "lr", "grad_norm", "lists")
    full = metrics(ref)
    assert [[r[k] for k in keys] for r in recs] == [[r[k] for k in keys] for r in full]  # bitwise
    assert not half.exists()  # stale tmp dirs are removed on resume
    assert sorted(p.name for p in ck.glob("step-*")) == ["step-0000004", "step-0000006"]  # keep_last=2
    state = json.loads((ck / "step-0000006/trainer_state.json").read_text())
    assert state["step"] == 6 and state["backend"] == "single"
    wa = safetensors_weights(ref / "final/model.safetensors")
    wb = safetensors_weights(b / "final/model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    ca = safetensors_weights(ref / "checkpoints/step-0000006/trainable.safetensors")
    cb = safetensors_weights(ck / "step-0000006/trainable.safetensors")
    assert all(torch.equal(ca[k], cb[k]) for k in ca)


def test_auto_resume_picks_newest_complete_checkpoint_and_pruning_keeps_best(tmp_path):
    """The directories decide, not the `latest` marker (a crash can land between rename and marker)."""
    from lrt.train import checkpoint as ckpt

    root = tmp_path / "checkpoints"
    for step in (2, 4, 6):
        ckpt.tmp_dir(root, step).mkdir(parents=True)
        ckpt.finalize(root, step, {"step": step}, keep_last=2, protect=("step-0000002",))
    assert sorted(p.name for p in root.glob("step-*")) == ["step-0000002", "step-0000004", "step-0000006"]
    (root / "latest").write_text("step-0000004")  # stale marker
    ckpt.tmp_dir(root, 8).mkdir()  # a save that crashed
    (ckpt.step_dir(root, 10)).mkdir()  # a directory without trainer_state.json
    assert ckpt.find_resume(root, "auto") == ckpt.step_dir(root, 6)
    assert ckpt.find_resume(root, "none") is None
    assert ckpt.find_resume(root, str(ckpt.step_dir(root, 4))) == ckpt.step_dir(root, 4)
    ckpt.remove_stale_tmp(root)
    assert not ckpt.tmp_dir(root, 8).exists()
