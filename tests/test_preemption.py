"""Preemption: SIGTERM / SIGUSR1 to a real `lrt train` finishes the current optimizer step, writes a
checkpoint, exits 75 (`lrt.errors.PREEMPTED_EXIT`, what launch/slurm-multinode.sbatch requeues on),
and `train.resume=auto` then reproduces the uninterrupted run bitwise."""
from __future__ import annotations

import json
import signal
import sys

import pytest
import yaml

from _scale_helpers import metrics, run, signal_at_fault

KEYS = ("loss", "loss/lm", "loss/ranknet", "lr", "grad_norm", "lists")


@pytest.fixture(scope="module")
def recipe(tiny_model_dir, tiny_data, tmp_path_factory):
    p = tmp_path_factory.mktemp("preempt") / "r.yaml"
    p.write_text(yaml.safe_dump({
        "model": {"name_or_path": str(tiny_model_dir)},
        "data": {"train": str(tiny_data / "train.jsonl"), "max_length": 512},
        "prompt": {"preset": "compact", "max_passage_tokens": 24},
        "train": {"max_steps": 5, "per_device_batch_size": 1, "grad_accum": 2, "lr": 1e-3, "warmup_steps": 1,
                  "log_every": 1, "save_every": 4, "keep_last": 2, "save_final": False},
        "eval": {"at_start": False, "at_end": False},
        "log": {"progress": False},
        "output_dir": "unused",
    }))
    return p


@pytest.fixture(scope="module")
def reference(recipe, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    run([sys.executable, "-m", "lrt.cli", "train", str(recipe), f"output_dir={out}"])
    return out


@pytest.mark.slow  # ~15 s
def test_sigterm_checkpoints_exits_75_and_resumes_bitwise(recipe, reference, tmp_path):
    out = tmp_path / "run"
    lrt = [sys.executable, "-m", "lrt.cli", "train", str(recipe), f"output_dir={out}"]
    rc, log = signal_at_fault(lrt, "pause:after_step:3", signal.SIGTERM)
    assert rc == 75, log[-3000:]
    assert "Traceback" not in log
    assert "error: stopped by SIGTERM after step 3" in log and "train.resume=auto" in log
    ck = out / "checkpoints"
    assert (ck / "latest").read_text() == "step-0000003"  # the step in flight was finished and saved
    assert json.loads((out / "preempted.json").read_text())["step"] == 3
    assert [r["step"] for r in metrics(out)] == [1, 2, 3]

    run(lrt + ["train.resume=auto"])
    assert not (out / "preempted.json").exists()
    got, want = metrics(out), metrics(reference)
    assert [r["step"] for r in got] == [1, 2, 3, 4, 5]
    assert [[r[k] for k in KEYS] for r in got] == [[r[k] for k in KEYS] for r in want]  # bitwise


@pytest.mark.slow
def test_sigusr1_to_the_launcher_of_two_processes(recipe, reference, tmp_path):
    """`lrt train --nproc-per-node 2` (what the Slurm script runs on each node) gets SIGUSR1: it
    forwards it to the workers (torchrun ignores it), they checkpoint, the launcher exits 75."""
    out = tmp_path / "run"
    lrt = [sys.executable, "-m", "lrt.cli", "train", str(recipe), f"output_dir={out}", "train.grad_accum=1"]
    rc, log = signal_at_fault(lrt + ["--nproc-per-node", "2"], "pause:after_step:2", signal.SIGUSR1)
    assert rc == 75, log[-4000:]
    assert "training preempted (SIGUSR1)" in log
    st = json.loads((out / "checkpoints/step-0000002/trainer_state.json").read_text())
    assert st["step"] == 2 and st["world_size"] == 2
    assert (out / "checkpoints/step-0000002/rng-rank1.pt").exists()
    run(lrt + ["train.resume=auto", "--nproc-per-node", "2"])
    assert [r["step"] for r in metrics(out)] == [1, 2, 3, 4, 5]
