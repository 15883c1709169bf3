"""A non-editable `pip install .` works from any directory: the shipped recipes, jobs and launch files are
package data, a short quickstart runs, and every shipped recipe validates.

The fresh venv reuses this environment's dependencies (a `.pth` line to its site-packages, no download,
no torch re-install) and gets lrt itself from a wheel built from a copy of the tracked files.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def sh(cmd: list[str], cwd: Path, timeout: int = 600) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="disabled",
               DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PIP_NO_INDEX="1")
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0 and "Traceback" not in p.stdout + p.stderr, f"{cmd}\n{p.stdout}\n{p.stderr}"
    return p.stdout


@pytest.mark.workflow
@pytest.mark.slow
def test_pip_install_then_quickstart_and_validate_from_elsewhere(tmp_path):
    if not shutil.which("git") or not (REPO / ".git").exists():
        pytest.skip("needs the git checkout to list the tracked files")
    src = tmp_path / "src"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for rel in filter(None, files.decode().split("\0")):
        p = REPO / rel
        if p.is_symlink() or not p.is_file():  # the top-level recipes/launch/data_prep links are not package data
            continue
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, src / rel)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    vpy = venv / "bin" / "python"
    site = subprocess.run([str(vpy), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "_reuse_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    sh([str(vpy), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(src)], cwd=tmp_path)

    away = tmp_path / "elsewhere"
    away.mkdir()
    where = sh([str(vpy), "-c", "import lrt, os; print(os.path.dirname(lrt.__file__))"], cwd=away).strip()
    assert where.startswith(site) and str(REPO) not in where  # the wheel, not the checkout
    lrt = str(venv / "bin" / "lrt")
    recipes = sorted(Path(where, "resources", "recipes").glob("*.yaml"))
    assert len(recipes) >= 8 and (Path(where) / "resources" / "launch" / "ds_zero3.json").is_file()
    assert (Path(where) / "resources" / "data" / "fullrank" / "qrels.dl19-passage.txt").is_file()
    for r in recipes:
        assert sh([lrt, "validate", "--no-file-check", str(r)], cwd=away).startswith("ok:")
    assert "first-mistral-7b" in sh([lrt, "recipes", "list"], cwd=away)
    sh([lrt, "recipes", "copy", "first-mistral-7b", "my.yaml"], cwd=away)
    assert sh([lrt, "validate", "--no-file-check", "my.yaml"], cwd=away).startswith("ok:")
    out = sh([lrt, "quickstart", "--max-steps", "5", "--out", "qs", "eval.max_queries=50"], cwd=away)
    assert "exported + reloaded" in out and (away / "qs" / "run" / "final" / "lrt_reranker.json").is_file()
