"""`lrt export` as a hostile user drives it (issue 28), through the real CLI as a subprocess:
exports are atomic and never mixed, the checkpoint is verified as resume verifies it, a checkpoint
of another run is refused, truncated weights are named. Each refusal: exit 2, one `error:` line,
no traceback, and the earlier files byte for byte as they were."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_train import tiny_recipe


def lrt(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lrt.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)


def snapshot(d: Path) -> dict[str, bytes]:
    """Every file under d (links as their target text), to prove nothing changed."""
    if not d.exists():
        return {}
    if d.is_file():
        return {"": d.read_bytes()}
    return {p.relative_to(d).as_posix(): (os.readlink(p).encode() if p.is_symlink() else p.read_bytes())
            for p in sorted(d.rglob("*")) if p.is_file() or p.is_symlink()}


def assert_refused(p: subprocess.CompletedProcess, *needles: str) -> str:
    assert p.returncode == 2, (p.returncode, p.stdout[-1500:], p.stderr[-3000:])
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    errors = [x for x in p.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1, p.stderr[-3000:]
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]


def _train(tiny_model_dir, tiny_data, out: Path, **model) -> Path:
    from lrt.config import recipe_from_dict
    from lrt.workflows.run import train

    rec = tiny_recipe(tiny_model_dir, tiny_data, out, max_steps=2, save_every=1)
    rec["model"].update(model)
    rec["eval"]["at_end"] = False
    train(recipe_from_dict(rec, []))
    return out


@pytest.fixture(scope="module")
def full_run(tiny_model_dir, tiny_data, tmp_path_factory) -> Path:
    return _train(tiny_model_dir, tiny_data, tmp_path_factory.mktemp("hx") / "full")


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, tiny_data, tmp_path_factory) -> Path:
    return _train(tiny_model_dir, tiny_data, tmp_path_factory.mktemp("hx") / "lora",
                  lora={"r": 4, "alpha": 8, "dropout": 0.0})


@pytest.fixture(scope="module")
def exports(full_run, lora_run, tmp_path_factory) -> dict[str, Path]:
    """One export of each kind, written by the CLI (the kinds the mixing cases start from)."""
    d = tmp_path_factory.mktemp("hx-exports")
    p = lrt("export", full_run, "--out", d / "full")
    assert p.returncode == 0, p.stderr[-2000:]
    p = lrt("export", lora_run, "--adapter-only", "--out", d / "adapter")
    assert p.returncode == 0, p.stderr[-2000:]
    return {"full": d / "full", "adapter-only": d / "adapter"}


def test_an_export_records_what_it_holds(exports, full_run):
    for kind, d in exports.items():
        rec = json.loads((d / "lrt_export.json").read_text())
        assert rec["kind"] == kind
        assert sorted(rec["files"]) == sorted(p.relative_to(d).as_posix() for p in d.rglob("*")
                                              if p.is_file() and p.name != "lrt_export.json")
        assert not list(d.parent.glob(".*lrt-tmp*"))  # no temporary directory left beside it
    # final/ of `lrt train` says what it holds too
    assert json.loads((full_run / "final" / "lrt_export.json").read_text())["kind"] == "full"


# (case, source, flags, what --out holds first, needle in the error)
MIX = [
    ("adapter-only over full", "lora", ["--adapter-only"], "full", "already holds a full export"),
    ("full over adapter-only", "full", [], "adapter-only", "already holds a adapter-only export"),
    ("full over a non-lrt dir", "full", [], "foreign", "files that are not an lrt export"),
    ("full into a file", "full", [], "file", "is a file, not a directory"),
    ("full into the run dir", "full", ["--overwrite"], "run", "is (or contains, or lies inside) the source"),
    ("full into its checkpoints", "full", ["--overwrite"], "ckpt", "is (or contains, or lies inside) the source"),
    ("adapter-only into a dangling link", "lora", ["--adapter-only"], "dangling", "a dangling symlink"),
]


@pytest.mark.parametrize("case,src,flags,holds,needle", MIX, ids=[m[0] for m in MIX])
def test_exports_never_mix(case, src, flags, holds, needle, full_run, lora_run, exports, tmp_path):
    run = {"full": full_run, "lora": lora_run}[src]
    out = tmp_path / "out"
    if holds in exports:
        shutil.copytree(exports[holds], out)
    elif holds == "foreign":
        out.mkdir()
        (out / "notes.txt").write_text("my notes")
    elif holds == "file":
        out.write_text("a file")
    elif holds == "run":
        out = run
    elif holds == "ckpt":
        out = run / "checkpoints" / "step-0000002"
    elif holds == "dangling":
        out.symlink_to(tmp_path / "nowhere")
    before = snapshot(out), snapshot(run)
    assert_refused(lrt("export", run, "--out", out, *flags), needle)
    assert (snapshot(out), snapshot(run)) == before
    assert not list(out.parent.glob(f".{out.name}.lrt-*"))


def test_overwrite_replaces_a_foreign_dir_whole(full_run, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    p = lrt("export", full_run, "--out", out, "--overwrite")
    assert p.returncode == 0, p.stderr[-2000:]
    assert not (out / "notes.txt").exists()  # replaced whole: nothing of the old directory mixes in
    assert json.loads((out / "lrt_export.json").read_text())["kind"] == "full"


def test_same_kind_is_replaced_whole(full_run, exports, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(exports["full"], out)
    (out / "model-00001-of-00002.safetensors").write_bytes(b"stale shard of an older export")
    p = lrt("export", full_run, "--out", out, "--checkpoint", full_run / "checkpoints" / "step-0000001")
    assert p.returncode == 0, p.stderr[-2000:]
    assert not (out / "model-00001-of-00002.safetensors").exists()
    assert "step-0000001" in (out / "README.md").read_text()


def test_kill_9_during_an_export_keeps_the_old_one(full_run, exports, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(exports["full"], out)
    before = snapshot(out)
    env = {**os.environ, "LRT_FAULT": "kill:in_export:0"}
    p = lrt("export", full_run, "--out", out, "--checkpoint", full_run / "checkpoints" / "step-0000001", env=env)
    assert p.returncode == -9 and "LRT_FAULT: kill at in_export" in p.stdout, (p.returncode, p.stderr[-2000:])
    assert snapshot(out) == before  # the old export, untouched: no new weights under the old card
    assert list(tmp_path.glob(".out.lrt-tmp-*"))  # the killed one's temp dir ...
    p = lrt("export", full_run, "--out", out, "--checkpoint", full_run / "checkpoints" / "step-0000001")
    assert p.returncode == 0, p.stderr[-2000:]
    assert not list(tmp_path.glob(".out.lrt-*"))  # ... is removed by the next export
    assert "step-0000001" in (out / "README.md").read_text()


# ---- the checkpoint is verified as resume verifies it --------------------------------------
def _tamper(f: Path, how: str) -> None:
    data = f.read_bytes()
    if how == "flip":
        f.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    elif how == "truncate":
        f.write_bytes(data[: len(data) // 2])
    elif how == "delete":
        f.unlink()
    elif how == "extra":
        (f.parent / "extra.bin").write_bytes(b"x")


@pytest.mark.parametrize("how,needle", [("flip", "trainable.safetensors does not match its sha256"),
                                        ("truncate", "trainable.safetensors has"),
                                        ("delete", "trainable.safetensors is missing"),
                                        ("extra", "extra.bin is not in the manifest")])
def test_tampered_checkpoint_is_refused(how, needle, full_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(full_run, run, symlinks=True)
    for cp in (run / "checkpoints").glob("step-*"):
        _tamper(cp / "trainable.safetensors", how)
    assert_refused(lrt("export", run, "--out", tmp_path / "x"), needle, "no verified checkpoint")
    assert_refused(lrt("export", run, "--out", tmp_path / "x", "--checkpoint", run / "checkpoints" / "step-0000002"),
                   needle)
    assert not (tmp_path / "x").exists()


def test_a_tampered_newest_checkpoint_falls_back_with_a_warning(full_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(full_run, run, symlinks=True)
    _tamper(run / "checkpoints" / "step-0000002" / "trainable.safetensors", "flip")
    p = lrt("export", run, "--out", tmp_path / "x")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "exporting" in p.stderr and "step-0000001" in p.stderr and "does not match its sha256" in p.stderr
    assert "checkpoint step-0000001" in (tmp_path / "x" / "README.md").read_text()


def test_a_checkpoint_of_another_run_is_refused(full_run, lora_run, tmp_path):
    other = lora_run / "checkpoints" / "step-0000002"
    err = assert_refused(lrt("export", full_run, "--out", tmp_path / "x", "--checkpoint", other),
                         f"not a checkpoint of {full_run}", f"lrt export {lora_run} --checkpoint")
    assert "recipe and card" in err
    # a symlink to the other run's checkpoint: the same
    link = tmp_path / "link"
    link.symlink_to(other)
    assert_refused(lrt("export", full_run, "--out", tmp_path / "x", "--checkpoint", link), "not a checkpoint of")
    assert not (tmp_path / "x").exists()
