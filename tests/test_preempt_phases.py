"""Preemption in every phase of `lrt train`: SIGTERM or Slurm's SIGUSR1 during a training step, an
evaluation (at the start, in the loop, at the end), the `final/` export, and with DataLoader
workers (the whole process group signalled) each ends in a checkpoint and exit 75 (or, during the
final export, a completed run and exit 0), never a traceback; `train.resume=auto` then completes
the run to the uninterrupted run's final weights bitwise.

The phase is hit deterministically with the `LRT_FAULT=pause:POINT:STEP` hook (lrt.train.checkpoint
.fault): rank 0 pauses at POINT of STEP, the test sends the signal, the pause ends on it."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import yaml

from _scale_helpers import REPO, kill_tree, last_per_step, metrics, run, safetensors_weights, subprocess_env

STEPS = 4


@pytest.fixture(scope="module")
def recipe(tiny_model_dir, tiny_data, tmp_path_factory):
    p = tmp_path_factory.mktemp("phases") / "r.yaml"
    p.write_text(yaml.safe_dump({
        "model": {"name_or_path": str(tiny_model_dir)},
        "data": {"train": str(tiny_data / "train.jsonl"), "eval": str(tiny_data / "eval.jsonl"), "max_length": 512},
        "prompt": {"preset": "compact", "max_passage_tokens": 24},
        # save_every unset: no checkpoint unless preempted (the hardest case for the end-of-run phases)
        "train": {"max_steps": STEPS, "per_device_batch_size": 1, "grad_accum": 2, "lr": 1e-3, "warmup_steps": 1,
                  "log_every": 1, "save_every": None, "save_final": True},
        "eval": {"at_start": True, "at_end": True, "every": 2},
        "log": {"progress": False},
        "output_dir": "unused",
    }))
    return p


def lrt_train(recipe, out, *extra: str) -> list[str]:
    return [sys.executable, "-m", "lrt.cli", "train", str(recipe), f"output_dir={out}", *extra]


@pytest.fixture(scope="module")
def reference(recipe, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    run(lrt_train(recipe, out))
    return out


def signal_at(cmd: list[str], fault: str, sig: int, group: bool, timeout: float = 300) -> tuple[int, str]:
    """Run `cmd` with LRT_FAULT=fault; when rank 0 reports the pause, send `sig` to the process (or,
    with `group`, to its whole process group, DataLoader workers included) and wait for the exit."""
    p = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(LRT_FAULT=fault), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
    out: list[str] = []
    try:
        assert p.stdout is not None
        for line in p.stdout:
            out.append(line)
            if line.startswith("LRT_FAULT:"):
                (os.killpg if group else os.kill)(p.pid, sig)
                break
        else:
            raise AssertionError(f"exited ({p.wait()}) before the fault point:\n" + "".join(out[-80:]))
        out.append(p.communicate(timeout=timeout)[0])
    finally:
        if p.poll() is None:
            kill_tree(p.pid)
            p.wait()
    return p.returncode, "".join(out)


def final_weights(run_dir):
    files = sorted(run_dir.glob("final/**/*.safetensors"))
    assert files, f"no final/ weights in {run_dir}"
    return {f.relative_to(run_dir).as_posix(): safetensors_weights(f) for f in files}


def assert_same_run(out, reference):
    got, want = final_weights(out), final_weights(reference)
    assert sorted(got) == sorted(want)
    for name in want:
        for k, t in want[name].items():
            assert got[name][k].dtype == t.dtype and got[name][k].equal(t), f"{name}:{k} differs"  # bitwise
    keys = ("loss", "lr", "grad_norm")
    assert [[r[k] for k in keys] for r in last_per_step(metrics(out))] == \
           [[r[k] for k in keys] for r in last_per_step(metrics(reference))]
    evals = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in evals if "eval/queries" in r]
    assert steps == sorted(set(steps)) == [0, 2, STEPS], steps  # every evaluation once, none lost or repeated


# (where the signal lands, LRT_FAULT, extra overrides, signal the process group, expected exit)
CASES = {
    "train step": ("pause:after_step:1", (), False, 75),
    "start eval": ("pause:in_eval:0", (), False, 75),
    "loop eval": ("pause:in_eval:2", (), False, 75),
    "end eval": (f"pause:in_eval:{STEPS}", (), False, 75),
    "final write": (f"pause:in_final:{STEPS}", (), False, 0),
    "dataloader workers": ("pause:after_step:2", ("data.num_workers=2",), True, 75),
}
FAST = [("train step", signal.SIGTERM), ("start eval", signal.SIGUSR1), ("loop eval", signal.SIGTERM),
        ("end eval", signal.SIGUSR1), ("final write", signal.SIGTERM), ("dataloader workers", signal.SIGTERM)]
OTHER = {signal.SIGTERM: signal.SIGUSR1, signal.SIGUSR1: signal.SIGTERM}


def check_phase(recipe, reference, tmp_path, phase: str, sig: int) -> None:
    fault, extra, group, want_rc = CASES[phase]
    out = tmp_path / "run"
    rc, log = signal_at(lrt_train(recipe, out, *extra), fault, sig, group)
    assert rc == want_rc, log[-4000:]
    assert "Traceback" not in log and "DataLoader worker" not in log, log[-4000:]
    name = signal.Signals(sig).name
    if want_rc == 75:
        errors = [ln for ln in log.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and f"stopped by {name}" in errors[0] and "train.resume=auto" in errors[0], log[-3000:]
        marker = json.loads((out / "preempted.json").read_text())
        assert marker["signal"] == name
        assert not (out / "final").exists()
        run(lrt_train(recipe, out, "train.resume=auto", *extra))
        assert not (out / "preempted.json").exists()
    else:  # the signal came while final/ was written: the run completes, there is nothing to resume
        assert f"{name} arrived while the run was finishing" in log, log[-3000:]
    assert_same_run(out, reference)


@pytest.mark.slow  # 15-25 s per phase
@pytest.mark.parametrize("phase,sig", FAST, ids=[f"{p}-{signal.Signals(s).name}" for p, s in FAST])
def test_signal_in_phase_checkpoints_and_resumes_bitwise(recipe, reference, tmp_path, phase, sig):
    check_phase(recipe, reference, tmp_path, phase, sig)


@pytest.mark.slow
@pytest.mark.parametrize("phase,sig", [(p, OTHER[s]) for p, s in FAST],
                         ids=[f"{p}-{signal.Signals(OTHER[s]).name}" for p, s in FAST])
def test_other_signal_in_phase(recipe, reference, tmp_path, phase, sig):
    check_phase(recipe, reference, tmp_path, phase, sig)
