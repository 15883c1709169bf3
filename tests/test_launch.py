"""Launch paths without launching: every script's dry run, `lrt train --nproc-per-node/--nnodes`
re-execution under torchrun, and every DeepSpeed JSON fills from the recipe without 'auto'.
(Real 2-process launches through each of them run in tests/test_scale_multiproc.py; every recipe
validates in tests/test_config.py.)"""
from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from lrt.errors import LrtError
from lrt.launch import rendezvous_endpoint, torchrun_command

from _scale_helpers import REPO, subprocess_env


def dry(script: str, *args: str, **env: str) -> list[str]:
    p = subprocess.run(["bash", f"launch/{script}", *args], cwd=REPO, env=subprocess_env(DRY_RUN="1", **env),
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return shlex.split(p.stdout.strip())


def test_torchrun_script_dry_run():
    cmd = dry("torchrun.sh", "8", "recipes/first-mistral-7b.yaml", "train.grad_accum=2")
    assert cmd[1:] == ["-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "8",
                       "-m", "lrt.cli", "train", "recipes/first-mistral-7b.yaml", "train.grad_accum=2"]
    p = subprocess.run(["bash", "launch/torchrun.sh", "--dry-run", "2", "r.yaml"], cwd=REPO, capture_output=True, text=True)
    assert p.returncode == 0 and "--nproc_per_node 2" in p.stdout
    p = subprocess.run(["bash", "launch/torchrun.sh"], cwd=REPO, capture_output=True, text=True)
    assert p.returncode == 2 and "launch/torchrun.sh 8" in p.stdout  # usage


def test_deepspeed_script_dry_run():
    cmd = dry("deepspeed.sh", "8", "recipes/first-mistral-7b.yaml", MASTER_PORT="29611")
    assert cmd == ["deepspeed", "--num_gpus", "8", "--master_port", "29611", "--no_local_rank", "--module",
                   "lrt.cli", "train", "recipes/first-mistral-7b.yaml"]


def test_slurm_multinode_dry_run_rendezvous_on_head_node():
    env = dict(SLURM_NNODES="2", HEAD_NODE="gpu-node-01", SLURM_JOB_ID="4242")
    cmd = dry("slurm-multinode.sbatch", "recipes/first-mistral-7b.yaml", "train.grad_accum=1", **env)
    assert cmd[:2] == ["srun", "--kill-on-bad-exit=1"]
    # one `lrt train --nproc-per-node` per node (it forwards preemption signals to its workers)
    assert cmd[cmd.index("lrt.cli"):] == ["lrt.cli", "train", "recipes/first-mistral-7b.yaml", "--nproc-per-node", "8",
                                         "--nnodes", "2", "train.resume=auto", "train.grad_accum=1"]
    # ... which runs torchrun with the c10d rendezvous on the head node
    lrt = cmd[cmd.index("lrt.cli") - 2:]
    p = subprocess.run(lrt, cwd=REPO, env=subprocess_env(DRY_RUN="1", LRT_RDZV_ENDPOINT="gpu-node-01:29500",
                                                         LRT_RDZV_ID="4242"), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    tr = shlex.split(p.stdout.strip().splitlines()[-1])
    tr = tr[tr.index("torch.distributed.run") + 1:]
    assert tr[:tr.index("-m")] == ["--nnodes", "2", "--rdzv_backend", "c10d", "--rdzv_endpoint", "gpu-node-01:29500",
                                   "--rdzv_id", "4242", "--nproc_per_node", "8"]
    header = (REPO / "launch/slurm-multinode.sbatch").read_text()
    assert "#SBATCH --nodes=2" in header and "#SBATCH --ntasks-per-node=1" in header
    assert "#SBATCH --requeue" in header and "#SBATCH --signal=USR1@300" in header
    assert 'PREEMPTED_EXIT=75' in header and 'scontrol requeue "$SLURM_JOB_ID"' in header


def test_lrt_train_relaunches_under_torchrun(monkeypatch, capsys, tiny_model_dir, tiny_data, tmp_path):
    from lrt.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {{name_or_path: {tiny_model_dir}}}\ndata: {{train: {tiny_data / 'train.jsonl'}}}\n"
                      f"output_dir: {tmp_path / 'out'}\n")
    monkeypatch.setenv("DRY_RUN", "1")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert main(["train", str(recipe), "train.lr=1e-5", "--nproc-per-node", "2"]) == 0
    cmd = shlex.split(capsys.readouterr().out.strip().splitlines()[-1])
    assert cmd[1:] == ["-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "2",
                       "-m", "lrt.cli", "train", str(recipe), "train.lr=1e-5"]
    monkeypatch.setenv("MASTER_ADDR", "head0")
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    assert main(["train", str(recipe), "--nproc-per-node", "8", "--nnodes", "2"]) == 0
    out = capsys.readouterr().out
    assert "--nnodes 2 --rdzv_backend c10d --rdzv_endpoint head0:29500 --rdzv_id 77 --nproc_per_node 8" in out
    assert not (tmp_path / "out").exists()  # nothing ran


def test_rendezvous_endpoint_rules():
    assert rendezvous_endpoint({"LRT_RDZV_ENDPOINT": "h:1234"}) == "h:1234"
    assert rendezvous_endpoint({"LRT_RDZV_ENDPOINT": "h"}) == "h:29500"
    assert rendezvous_endpoint({"MASTER_ADDR": "m", "MASTER_PORT": "5"}) == "m:5"
    with pytest.raises(LrtError, match="LRT_RDZV_ENDPOINT"):
        rendezvous_endpoint({})
    with pytest.raises(LrtError):
        torchrun_command("r.yaml", [], 0)


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "launch").glob("ds_*.json")))
def test_every_deepspeed_config_fills_from_the_recipe(name, tiny_model_dir, tiny_data, tmp_path):
    from lrt.config import recipe_from_dict
    from lrt.train.zero import deepspeed_config, zero_stage

    raw = {"model": {"name_or_path": str(tiny_model_dir)}, "data": {"train": str(tiny_data / "train.jsonl")},
           "train": {"deepspeed": f"launch/{name}", "per_device_batch_size": 3, "grad_accum": 5, "precision": "bf16",
                     "max_grad_norm": 0.5},
           "output_dir": str(tmp_path)}
    for on_gpu in (False, True):
        cfg = deepspeed_config(recipe_from_dict(raw, []), on_gpu=on_gpu)
        assert cfg["train_micro_batch_size_per_gpu"] == 3 and cfg["gradient_accumulation_steps"] == 5
        assert cfg["bf16"] == {"enabled": True} and cfg["gradient_clipping"] == 0.5
        assert "optimizer" not in cfg and "scheduler" not in cfg and zero_stage(cfg) in (2, 3)
        off = cfg["zero_optimization"].get("offload_optimizer")
        if off:
            assert off["pin_memory"] is on_gpu and cfg.get("zero_force_ds_cpu_optimizer", True) is on_gpu
    raw["train"]["max_grad_norm"] = None
    assert "gradient_clipping" not in deepspeed_config(recipe_from_dict(raw, []))


def test_launch_files_are_executable_scripts():
    for f in ("torchrun.sh", "deepspeed.sh", "slurm-multinode.sbatch"):
        p = REPO / "launch" / f
        assert p.read_text().startswith("#!/usr/bin/env bash") and Path(p).stat().st_mode & 0o111, f
