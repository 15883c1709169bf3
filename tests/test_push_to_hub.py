"""`lrt export --push-to-hub REPO [--private]` through the real CLI and the real huggingface_hub
client, against a loopback fake Hub (HF_ENDPOINT). The token comes from HF_TOKEN, goes only into
the Authorization header, and is written to no file."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lrt.testing.fake_hub import FakeHub
from test_train import tiny_recipe

TOKEN = "hf_lrtTestToken0123456789abcdefXYZ"


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir, tiny_data, tmp_path_factory):
    from lrt.config import recipe_from_dict
    from lrt.workflows.run import train

    out = tmp_path_factory.mktemp("push") / "run"
    rec = tiny_recipe(tiny_model_dir, tiny_data, out, max_steps=2, save_every=2)
    rec["eval"]["at_end"] = False
    train(recipe_from_dict(rec, []))
    return out


def _env(hub: FakeHub, home: Path, token: str | None = TOKEN) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN",
                                                           "HUGGING_FACE_HUB_TOKEN")}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(home), HF_HUB_DISABLE_TELEMETRY="1", NO_PROXY="127.0.0.1")
    if token:
        env["HF_TOKEN"] = token
    return env


def _lrt(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lrt.cli", *args], capture_output=True, text=True, env=env, timeout=600)


def _files_containing(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_push_to_hub_uploads_the_export_with_env_token(run_dir, tmp_path):
    home = tmp_path / "hf_home"
    with FakeHub() as hub:
        p = _lrt(["export", str(run_dir), "--out", str(tmp_path / "exp"), "--push-to-hub", "me/tiny-reranker",
                  "--private"], _env(hub, home))
    assert p.returncode == 0, p.stderr[-2000:]
    assert f"pushed: {hub.url}/me/tiny-reranker" in p.stdout
    assert [(m, path) for m, path, _ in hub.requests] == [
        ("POST", "/api/repos/create"), ("POST", "/api/validate-yaml"),
        ("POST", "/api/models/me/tiny-reranker/preupload/main"), ("POST", "/api/models/me/tiny-reranker/commit/main")]
    assert all(auth == f"Bearer {TOKEN}" for _, _, auth in hub.requests)
    assert hub.repos["me/tiny-reranker"]["visibility"] == "private"
    uploaded = hub.files["me/tiny-reranker"]
    assert hub.validated == [uploaded["README.md"].decode()]  # the card's metadata passed the Hub's YAML check
    local = {str(f.relative_to(tmp_path / "exp")): f.read_bytes() for f in (tmp_path / "exp").rglob("*") if f.is_file()}
    assert uploaded == local  # every file, byte for byte
    assert {"model.safetensors", "config.json", "tokenizer.json", "lrt_reranker.json", "README.md"} <= set(uploaded)
    # the card's usage snippets load the repo id
    assert 'Reranker.from_pretrained("me/tiny-reranker")' in uploaded["README.md"].decode()
    # the token is in no file: not the export, not the run, not HF_HOME, not the test dir
    for root in (tmp_path, run_dir):
        assert _files_containing(root, TOKEN.encode()) == []


def test_push_an_existing_export_dir(run_dir, tmp_path):
    final = run_dir / "final"
    with FakeHub() as hub:
        p = _lrt(["export", str(final), "--push-to-hub", "me/final"], _env(hub, tmp_path / "home"))
    assert p.returncode == 0, p.stderr[-2000:]
    assert "visibility" not in hub.repos["me/final"]  # without --private: the Hub's default
    assert set(hub.files["me/final"]) >= {"model.safetensors", "README.md", "lrt_reranker.json"}
    assert _files_containing(run_dir, TOKEN.encode()) == []


def test_push_errors_are_one_line(run_dir, tmp_path):
    with FakeHub() as hub:
        p = _lrt(["export", str(run_dir / "final"), "--push-to-hub", "me/x"], _env(hub, tmp_path / "home", token=None))
        assert p.returncode == 2 and p.stderr.strip().splitlines()[-1].startswith("error: no Hugging Face token")
        assert "Traceback" not in p.stderr and hub.requests == []
        env = _env(hub, tmp_path / "home")
        env["HF_HUB_OFFLINE"] = "1"
        p = _lrt(["export", str(run_dir / "final"), "--push-to-hub", "me/x"], env)
        assert p.returncode == 2 and "offline mode (HF_HUB_OFFLINE=1" in p.stderr and "Traceback" not in p.stderr
        p = _lrt(["export", str(run_dir / "final")], _env(hub, tmp_path / "home"))
        assert p.returncode == 2 and "already an export" in p.stderr
