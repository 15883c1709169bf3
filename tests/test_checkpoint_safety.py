"""Corrupt, crafted and diverging checkpoints through the real `lrt train` path.

A base run writes step-2 and step-4 (constant LR, so `train.max_steps` may grow on resume without
changing any earlier step). Each case corrupts a copy of it the way the issue describes and resumes
with `train.resume=auto train.max_steps=6`: the newest checkpoint is refused with a warning that
names the file, training continues from step-2 and matches an uninterrupted 6-step run bitwise;
when nothing verifies, one clear `error:` line and exit 2. Nothing ever prints a traceback or trains
on NaN, and a pickle with a `__reduce__` payload never runs.
"""
from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from _scale_helpers import REPO, metrics, subprocess_env

STEP2, STEP4 = "checkpoints/step-0000002", "checkpoints/step-0000004"
KEYS = ("loss", "loss/lm", "loss/ranknet", "lr", "grad_norm", "lists")


def write_recipe(path, model_dir, data_dir, **train) -> None:
    path.write_text(yaml.safe_dump({
        "model": {"name_or_path": str(model_dir)},
        "data": {"train": str(data_dir / "train.jsonl"), "max_length": 512},
        "prompt": {"preset": "compact", "max_passage_tokens": 24},
        "train": {"max_steps": 4, "per_device_batch_size": 2, "grad_accum": 1, "lr": 1e-3, "schedule": "constant",
                  "log_every": 1, "save_every": 2, "keep_last": 3, "save_final": False, **train},
        "eval": {"at_start": False, "at_end": False},
        "log": {"progress": False},
        "output_dir": "unused",
    }))


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tiny_data, tmp_path_factory):
    """The base run (checkpoints at steps 2 and 4) and an uninterrupted 6-step reference."""
    from lrt.cli import main

    d = tmp_path_factory.mktemp("ckpt")
    recipe = d / "r.yaml"
    write_recipe(recipe, tiny_model_dir, tiny_data)
    assert main(["train", str(recipe), f"output_dir={d / 'base'}"]) == 0
    assert main(["train", str(recipe), f"output_dir={d / 'ref'}", "train.max_steps=6"]) == 0
    return {"recipe": recipe, "base": d / "base", "ref": d / "ref"}


class Result:
    def __init__(self, returncode: int, stderr: str) -> None:
        self.returncode, self.stderr, self.stdout = returncode, stderr, ""


def lrt_train(args: list[str], capfd=None, caplog=None):
    """`lrt train` in this process (`lrt.cli.main`: fast) when capfd/caplog are given, else a real
    subprocess. Either way stderr (and the log) is returned for asserting on it."""
    if capfd is None:
        return subprocess.run([sys.executable, "-m", "lrt.cli", "train", *args], cwd=REPO, env=subprocess_env(),
                              capture_output=True, text=True, timeout=600)
    from lrt.cli import main

    caplog.clear()
    capfd.readouterr()
    with caplog.at_level("INFO", logger="lrt"):
        rc = main(["train", *args])  # an exception (a traceback) would fail the test here
    return Result(rc, capfd.readouterr().err + "\n" + caplog.text)


def copy_base(runs, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(runs["base"], out)
    return out


def resume(runs, out, capfd=None, caplog=None):
    p = lrt_train([str(runs["recipe"]), f"output_dir={out}", "train.resume=auto", "train.max_steps=6"], capfd, caplog)
    assert "Traceback" not in p.stderr + p.stdout, p.stderr[-4000:]
    return p


def truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def nan_weights(path) -> None:
    """Overwrite every tensor with NaN, header intact (same size, the same names and shapes)."""
    from safetensors.torch import load_file, save_file

    w = load_file(str(path))
    save_file({k: torch.full_like(v, float("nan")) for k, v in w.items()}, str(path))


def refresh_manifest(ck) -> None:
    """What a careful attacker (or bit rot before the save) does: a manifest matching the bad files."""
    from lrt.train.checkpoint import write_manifest

    (ck / "manifest.json").unlink()
    write_manifest(ck)


class Evil:
    """Unpickling this writes a marker file: what a crafted checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def assert_fell_back_and_matches(p, out, ref, file_hint: str) -> None:
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"{out / STEP4}" in p.stderr and "is unusable" in p.stderr and file_hint in p.stderr, p.stderr[-3000:]
    assert f"resumed from {out / STEP2} at step 2" in p.stderr
    recs = metrics(out)
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5, 6]  # the old steps 3-4 were dropped, trained again
    assert all(math.isfinite(r["loss"]) for r in recs)
    assert [[r[k] for k in KEYS] for r in recs] == [[r[k] for k in KEYS] for r in metrics(ref)]  # bitwise


CASES = {
    "truncated safetensors": (lambda ck: truncate(ck / "trainable.safetensors"), "trainable.safetensors has"),
    "truncated optimizer": (lambda ck: truncate(ck / "optimizer.pt"), "optimizer.pt has"),
    "truncated rng": (lambda ck: truncate(ck / "rng-rank0.pt"), "rng-rank0.pt has"),
    "truncated state": (lambda ck: truncate(ck / "trainer_state.json"), "trainer_state.json has"),
    "deleted weights": (lambda ck: (ck / "trainable.safetensors").unlink(), "trainable.safetensors is missing"),
    "nan weights": (lambda ck: nan_weights(ck / "trainable.safetensors"), "trainable.safetensors does not match"),
    "nan weights, manifest rewritten": (lambda ck: (nan_weights(ck / "trainable.safetensors"), refresh_manifest(ck)),
                                        "NaN/Inf values"),
    "manifest deleted": (lambda ck: (ck / "manifest.json").unlink(), "no manifest.json"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_corrupt_newest_checkpoint_falls_back_with_a_warning(runs, tmp_path, case, capfd, caplog):
    out = copy_base(runs, tmp_path)
    corrupt, hint = CASES[case]
    corrupt(out / STEP4)
    assert_fell_back_and_matches(resume(runs, out, capfd, caplog), out, runs["ref"], hint)


def test_no_usable_checkpoint_is_one_clear_error(runs, tmp_path):
    out = copy_base(runs, tmp_path)
    truncate(out / STEP4 / "optimizer.pt")
    nan_weights(out / STEP2 / "trainable.safetensors")
    refresh_manifest(out / STEP2)
    p = resume(runs, out)
    assert p.returncode == 2
    err = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "no usable checkpoint" in err[0], p.stderr[-3000:]
    assert "optimizer.pt has" in err[0] and "NaN/Inf" in err[0] and "train.resume=none" in err[0]
    assert [r["step"] for r in metrics(out)] == [1, 2, 3, 4]  # nothing trained, nothing truncated


def test_crafted_pickle_never_executes_on_resume(runs, tmp_path):
    """The RNG and optimizer files are replaced by pickles whose `__reduce__` runs a shell command,
    with a manifest matching them (so only the safe loader stands in the way)."""
    marker = tmp_path / "pwned"
    payload = tmp_path / "payload.pt"
    torch.save({"python": Evil(marker)}, payload)
    subprocess.run([sys.executable, "-c", f"import pickle, torch; torch.load({str(payload)!r}, weights_only=False)"],
                   cwd=tmp_path, env=subprocess_env(PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'tests'}"), check=False)
    assert marker.exists(), "the payload must be live: an unsafe load runs it"  # the test can fail
    marker.unlink()

    out = copy_base(runs, tmp_path)
    shutil.copy(payload, out / STEP4 / "rng-rank0.pt")
    refresh_manifest(out / STEP4)
    with open(out / STEP2 / "optimizer.pt", "wb") as fh:
        pickle.dump(Evil(marker), fh)
    refresh_manifest(out / STEP2)
    p = resume(runs, out)
    assert not marker.exists()
    assert p.returncode == 2, p.stderr[-3000:]
    err = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "rng-rank0.pt: cannot be read safely" in err[0] and "optimizer.pt: cannot be read" in err[0]


def test_safe_load_refuses_code_in_process(tmp_path):
    from lrt.train.checkpoint import CheckpointError, rng_state, safe_load, set_rng_state

    marker = tmp_path / "pwned"
    torch.save({"python": Evil(marker)}, tmp_path / "rng.pt")
    with pytest.raises(CheckpointError, match="cannot be read safely"):
        safe_load(tmp_path / "rng.pt")
    assert not marker.exists()
    # the real RNG state round-trips through the weights-only loader
    torch.save(rng_state(), tmp_path / "ok.pt")
    a = (torch.rand(3), __import__("random").random(), __import__("numpy").random.rand())
    set_rng_state(safe_load(tmp_path / "ok.pt"))
    b = (torch.rand(3), __import__("random").random(), __import__("numpy").random.rand())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


@pytest.fixture(scope="module")
def overflowing_model(tiny_model_dir, tmp_path_factory):
    """The tiny model with its final norm scaled to 1e38 (finite, valid): logits overflow, the
    loss is inf/NaN from step 1, as a diverged run's would be."""
    from safetensors.torch import load_file, save_file

    d = tmp_path_factory.mktemp("overflow") / "model"
    shutil.copytree(tiny_model_dir, d)
    w = load_file(str(d / "model.safetensors"))
    w["model.norm.weight"].fill_(1e38)
    save_file(w, str(d / "model.safetensors"), metadata={"format": "pt"})
    return d


def test_nonfinite_loss_stops_without_saving_the_diverged_state(runs, overflowing_model, tmp_path, capfd, caplog):
    out = tmp_path / "div"
    p = lrt_train([str(runs["recipe"]), f"output_dir={out}", f"model.name_or_path={overflowing_model}",
                   "train.save_every=1"], capfd, caplog)
    assert "Traceback" not in p.stderr
    assert p.returncode == 2, p.stderr[-3000:]
    err = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and err[0].startswith("error: step 1: non-finite loss=") and "train.on_nonfinite" in err[0]
    assert "no checkpoint was written" in err[0]
    assert not list(out.glob("checkpoints/step-*"))
    lines = (out / "metrics.jsonl").read_text().splitlines()
    recs = [json.loads(ln) for ln in lines]  # valid JSON: no bare NaN / Infinity
    assert "NaN" not in "".join(lines) and "Infinity" not in "".join(lines)
    assert recs[-1]["step"] == 1 and recs[-1]["loss"] is None and recs[-1]["grad_norm"] is None


def test_nonfinite_skip_never_applies_a_nan_update(runs, overflowing_model, tmp_path, capfd, caplog):
    from safetensors.torch import load_file

    out = tmp_path / "skip"
    p = lrt_train([str(runs["recipe"]), f"output_dir={out}", f"model.name_or_path={overflowing_model}",
                   "train.on_nonfinite=skip"], capfd, caplog)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "step 1: non-finite" in p.stderr and "update skipped (train.on_nonfinite=skip)" in p.stderr
    # every update was skipped: the checkpoint holds the initial weights, bit for bit
    w0 = load_file(str(overflowing_model / "model.safetensors"))
    w = load_file(str(out / STEP4 / "trainable.safetensors"))
    shared = [k for k in w if k in w0]
    assert len(shared) >= len(w) - 1 and all(torch.equal(w[k], w0[k]) for k in shared)
    assert all(bool(torch.isfinite(v).all()) for v in w.values())
    [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]


def test_disk_full_during_save_is_one_clear_error(runs, tmp_path, monkeypatch, capsys):
    """ENOSPC from the safetensors writer at the second save: one error line, step-2 intact."""
    import errno

    import safetensors.torch

    from lrt.cli import main

    real, calls = safetensors.torch.save_file, []

    def full_disk(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", a[1])
        return real(*a, **k)

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    out = tmp_path / "full"
    rc = main(["train", str(runs["recipe"]), f"output_dir={out}"])
    err = capsys.readouterr().err
    assert rc == 2
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "step 4 failed: the disk is full" in lines[0] and "step-0000002 is intact" in lines[0]
    from lrt.train.checkpoint import verify

    assert verify(out / STEP2) is None and not (out / "checkpoints/.tmp-step-0000004").exists()
    assert (out / "checkpoints/latest").read_text() == "step-0000002"
