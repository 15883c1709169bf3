"""`lrt train` / `lrt quickstart` / `lrt plot` used as a hostile user would (issue 28): two runs on
one output_dir, quickstart over an unrelated run, qrels that judge no eval query, a full disk
during a checkpoint, a training file changed under `resume=auto`, plots of a resumed run whose
series changed. Each case: one clear `error:` line and exit 2 (or a correct result), no traceback,
earlier files intact. Everything goes through the real CLI in a subprocess."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from _scale_helpers import REPO, kill_tree, run, subprocess_env

LRT = [sys.executable, "-m", "lrt.cli"]


@pytest.fixture(scope="module")
def recipe(tiny_model_dir, tiny_data, tmp_path_factory):
    p = tmp_path_factory.mktemp("hostile") / "r.yaml"
    p.write_text(yaml.safe_dump({
        "model": {"name_or_path": str(tiny_model_dir)},
        "data": {"train": str(tiny_data / "train.jsonl"), "max_length": 512},
        "prompt": {"preset": "compact", "max_passage_tokens": 24},
        "train": {"max_steps": 2, "per_device_batch_size": 2, "lr": 1e-3, "log_every": 1, "save_every": 1,
                  "save_final": False},
        "eval": {"at_start": False, "at_end": False},
        "log": {"progress": False},
        "output_dir": "unused",
    }))
    return p


def lrt(*args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([*LRT, *args], cwd=REPO, env=subprocess_env(**env), capture_output=True, text=True,
                          timeout=timeout)


def one_error(p: subprocess.CompletedProcess, rc: int = 2) -> str:
    out = p.stdout + p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert p.returncode == rc and len(lines) == 1 and "Traceback" not in out, out[-4000:]
    return lines[0]


def snapshot(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


# ---- two runs on one output_dir ------------------------------------------------------------------
@pytest.mark.slow  # two training processes, ~14 s
def test_second_run_on_a_busy_output_dir_is_refused_naming_the_holder(recipe, tmp_path):
    out = tmp_path / "run"
    cmd = [*LRT, "train", str(recipe), f"output_dir={out}", "train.max_steps=3"]
    first = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(LRT_FAULT="pause:after_step:1"), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        assert first.stdout is not None
        for line in first.stdout:
            if line.startswith("LRT_FAULT:"):
                break
        else:
            raise AssertionError(f"first run exited ({first.wait()}) before pausing")
        before = snapshot(out / "checkpoints")
        for extra in ([], ["train.resume=auto"], ["train.overwrite_output_dir=true"]):
            line = one_error(lrt("train", str(recipe), f"output_dir={out}", *extra))
            assert f"output_dir {out} is in use by another training run" in line
            assert f"pid {first.pid} on host {socket.gethostname()}" in line and "another output_dir" in line
        assert snapshot(out / "checkpoints") == before  # the second run touched nothing
        os.kill(first.pid, signal.SIGTERM)  # the first run goes on undisturbed: checkpoint, exit 75
        assert first.wait(timeout=120) == 75
    finally:
        if first.poll() is None:
            kill_tree(first.pid)
            first.wait()
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1]


def test_stale_lock_of_a_dead_process_is_taken_over(recipe, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    (out / ".lrt-train.lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "since": "x"}))
    p = lrt("train", str(recipe), f"output_dir={out}")
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads((out / ".lrt-train.lock").read_text())["pid"] != dead.pid


# ---- quickstart next to an unrelated run ---------------------------------------------------------
def test_quickstart_does_not_delete_an_unrelated_run(recipe, tmp_path):
    d = tmp_path / "D"
    run([*LRT, "train", str(recipe), f"output_dir={d / 'run'}"])
    before = snapshot(d / "run")
    line = one_error(lrt("quickstart", "--out", str(d), "--max-steps", "1"))
    assert f"{d / 'run'} holds a training run quickstart did not create" in line and "another --out" in line
    assert snapshot(d / "run") == before


# ---- eval.qrels judging none of the eval queries ---------------------------------------------------
def test_qrels_sharing_no_qid_is_an_error_before_step_1(recipe, tiny_data, tmp_path):
    qrels = tmp_path / "other.qrels"
    qrels.write_text("elsewhere1 0 d1 1\nelsewhere2 0 d2 2\n")
    out = tmp_path / "run"
    line = one_error(lrt("train", str(recipe), f"output_dir={out}", f"data.eval={tiny_data / 'eval.jsonl'}",
                         f"eval.qrels={qrels}", "eval.at_end=true", "train.max_steps=2"))
    assert f"eval.qrels {qrels}: none of the 6 eval query ids is judged there" in line
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoints").exists()  # no step was trained


# ---- a full disk during a checkpoint save ----------------------------------------------------------
@pytest.fixture
def tiny_disk(tmp_path):
    """`tiny_disk(KiB)`: a tmpfs of that size. A checkpoint of the tiny model is ~1,490 KB
    (trainable.safetensors 483 KB, optimizer.pt 979 KB): 256 KiB holds none, 2,200 KiB one."""
    mounted = []

    def make(kib: int) -> Path:
        mnt = tmp_path / f"disk{kib}"
        mnt.mkdir()
        if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(mnt)],
                                               capture_output=True).returncode != 0:
            pytest.skip("needs root to mount a tmpfs")
        mounted.append(mnt)
        return mnt

    yield make
    for mnt in mounted:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_at_the_first_save_is_one_clear_error(recipe, tmp_path, tiny_disk):
    """safetensors runs out of space (its SafetensorError): one error, no .tmp-step-* left."""
    out = tiny_disk(256) / "run"
    line = one_error(lrt("train", str(recipe), f"output_dir={out}", f"data.cache_dir={tmp_path / 'cache'}"))
    assert "saving the checkpoint of step 1 failed: the disk is full" in line
    assert "No earlier checkpoint exists: free space and rerun" in line
    assert not list((out / "checkpoints").glob(".tmp-step-*"))  # the partial save is gone, its space freed
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1]


def test_full_disk_at_a_later_save_keeps_the_previous_checkpoint(recipe, tmp_path, tiny_disk):
    """torch.save runs out of space at step 2 (a RuntimeError, not an OSError): one error naming the
    intact step-1 checkpoint, no .tmp-step-* left, and the run resumes from step 1 once space is free."""
    out = tiny_disk(2200) / "run"
    args = ["train", str(recipe), f"output_dir={out}", f"data.cache_dir={tmp_path / 'cache'}"]
    line = one_error(lrt(*args))
    assert "saving the checkpoint of step 2 failed: the disk is full" in line
    assert "The previous checkpoint" in line and "step-0000001 is intact" in line and "train.resume=auto" in line
    assert not list((out / "checkpoints").glob(".tmp-step-*"))
    assert (out / "checkpoints" / "latest").read_text() == "step-0000001"
    subprocess.run(["mount", "-o", "remount,size=8192k", str(out.parent)], check=True)  # space freed
    p = lrt(*args, "train.resume=auto")
    assert p.returncode == 0, p.stderr[-3000:]
    assert (out / "checkpoints" / "latest").read_text() == "step-0000002"


# ---- resume=auto after the training file changed -----------------------------------------------
@pytest.mark.workflow
def test_resume_after_the_training_file_changed_is_refused(recipe, tiny_data, tmp_path):
    train = tmp_path / "train.jsonl"
    shutil.copy(tiny_data / "train.jsonl", train)
    out = tmp_path / "run"
    run([*LRT, "train", str(recipe), f"output_dir={out}", f"data.train={train}"])
    rows = train.read_text().splitlines()
    train.write_text("\n".join(rows[::-1]) + "\n")  # same rows, another order: other lists at every step
    before = snapshot(out / "checkpoints")
    args = ["train", str(recipe), f"output_dir={out}", f"data.train={train}", "train.max_steps=4", "train.resume=auto"]
    line = one_error(lrt(*args))
    assert f"data.train {train} changed since" in line and "step-0000002" in line
    assert "another output_dir" in line and "train.allow_data_change=true" in line
    assert snapshot(out / "checkpoints") == before
    p = lrt(*args, "train.allow_data_change=true")  # the documented override
    assert p.returncode == 0, p.stderr[-3000:]


# ---- lrt plot on a resumed run whose logged series changed ---------------------------------------
@pytest.mark.workflow
def test_plot_of_a_resumed_run_whose_eval_series_changed(recipe, tiny_data, tmp_path):
    """The first part evaluates against the candidates' grades, the resumed part (eval.qrels added,
    which resume allows) against a qrels file: two metrics in one metrics.jsonl."""
    out = tmp_path / "run"
    ev = [f"data.eval={tiny_data / 'eval.jsonl'}", "eval.every=1", "eval.at_start=true", "eval.at_end=true"]
    run([*LRT, "train", str(recipe), f"output_dir={out}", *ev])
    qrels = tmp_path / "eval.qrels"
    rows = [json.loads(x) for x in (tiny_data / "eval.jsonl").read_text().splitlines()]
    qrels.write_text("".join(f"{r['qid']} 0 {c['docid']} {i % 3}\n" for r in rows for i, c in enumerate(r["candidates"])))
    run([*LRT, "train", str(recipe), f"output_dir={out}", *ev, "train.resume=auto", "train.max_steps=4",
         f"eval.qrels={qrels}"])
    keys = {k for x in (out / "metrics.jsonl").read_text().splitlines() for k in json.loads(x) if "nDCG" in k}
    assert {"eval/nDCG@10_candidates", "eval/nDCG@10"} <= keys  # the series did change
    p = lrt("plot", str(out), "--out", str(tmp_path / "plots"))
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr[-3000:]
    assert (tmp_path / "plots" / "eval.png").stat().st_size > 1000

    from lrt.plot import Run, figures

    lines = {ln.get_label(): list(ln.get_xdata()) for ln in figures([Run(out)])["eval"].axes[0].get_lines()}
    assert lines["nDCG@10_candidates"] == [0, 1, 2] and lines["nDCG@10"] == [3, 4]


@pytest.mark.parametrize("bad", ["[1, 2]", '"text"', '{"step": true, "loss": 1}', '{"step": 1, "loss": "nan?"}',
                                 '{"step": 2, "eval/nDCG@10": "x"}', "{not json"])
def test_plot_skips_malformed_metrics_lines(tmp_path, bad):
    d = tmp_path / "run"
    d.mkdir()
    good = [{"step": 1, "loss": 1.0, "lr": 1e-3}, {"step": 2, "eval/nDCG@10": 0.5, "eval/initial_nDCG@10": 0.4}]
    (d / "metrics.jsonl").write_text("\n".join([json.dumps(good[0]), bad, json.dumps(good[1])]) + "\n")
    p = lrt("plot", str(d))
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr[-3000:]
    assert (d / "plots" / "overview.png").is_file()
