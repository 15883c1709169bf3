"""`lrt validate` loads the tokenizer and the model config (not the weights) and checks a sample of the data
as training would encode it: unknown-token share, chat template, position limit, identifiers, truncation."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BACKBONE = Path(__file__).resolve().parents[1] / "lrt/assets/tiny-backbone"
ENGLISH = ["Robert Gray (born 1945) is an American painter and sculptor who lives in Portland",
           "The Columbia River is the largest river in the Pacific Northwest region of North America",
           "Photosynthesis converts light energy into chemical energy stored in glucose"]


def _validate(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lrt.cli", "validate", str(tmp / "r.yaml"), *args],
                          capture_output=True, text=True, timeout=300, cwd=tmp)


@pytest.fixture()
def world(tmp_path: Path) -> Path:
    from lrt.demo.world import make_split, write_jsonl

    write_jsonl(make_split(32, 5, 1, query_words=1, passage_len=(4, 6), qid_prefix="t"), tmp_path / "train.jsonl")
    rows = [{"qid": f"q{i}", "query": "who is robert gray",
             "candidates": [{"docid": f"d{i}{j}", "text": ENGLISH[j]} for j in range(3)],
             "ranking": [f"d{i}{j}" for j in range(3)]} for i in range(8)]
    (tmp_path / "english.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "r.yaml").write_text(f"model: {{name_or_path: {BACKBONE}}}\n"
                                     "data: {train: train.jsonl, max_length: 256}\nprompt: {preset: compact}\n"
                                     "output_dir: runs/x\n")
    return tmp_path


def _one_error(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, res.stderr
    return errors[0]


def test_readable_data_passes_and_reports_the_checks(world: Path) -> None:
    res = _validate(world, "--show-prompt")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "positions: data.max_length 256 <= the model's limit 1024" in out
    assert "unknown tokens: 0.0% of" in out
    assert "identifiers A..E one token each" in out and "chat template applied" in out
    assert "--- one training sequence (" in out and "assistant" in out


@pytest.mark.slow  # ~9 s
def test_mostly_unknown_tokens_fail_with_the_share_and_the_fix(world: Path) -> None:
    err = _one_error(_validate(world, "data.train=english.jsonl"))
    share = float(err.split("error: ")[1].split("%")[0])
    assert share > 20 and "cannot read this text" in err and "--max-unknown-share" in err and "model.tokenizer" in err
    ok = _validate(world, "data.train=english.jsonl", "--max-unknown-share", "0.99")
    assert ok.returncode == 0 and "unknown tokens" in ok.stdout
    assert "warning: unknown tokens:" in ok.stderr  # accepted, still said


def test_max_length_beyond_the_position_limit_fails(world: Path) -> None:
    err = _one_error(_validate(world, "data.max_length=4096"))
    assert "data.max_length=4096" in err and "max_position_embeddings=1024" in err and "data.max_length<=1024" in err


@pytest.mark.slow  # ~10 s: `lrt validate` subprocesses loading the model
def test_a_missing_chat_template_fails_before_training(world: Path) -> None:
    bare = world / "bare"
    shutil.copytree(BACKBONE, bare)
    (bare / "chat_template.jinja").unlink()
    cfg = json.loads((bare / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(cfg))
    err = _one_error(_validate(world, f"model.name_or_path={bare}"))
    assert "no chat template" in err and "prompt.chat_template=none" in err
    assert _validate(world, f"model.name_or_path={bare}", "prompt.chat_template=none").returncode == 0


def test_pointwise_reports_pairs(world: Path) -> None:
    res = _validate(world, "scoring.mode=pointwise", "prompt.preset=compact_pointwise", "loss=[{name: softmax_ce}]")
    assert res.returncode == 0, res.stderr
    assert "pairs: " in res.stdout and "per pair" in res.stdout and "one token each" in res.stdout


def test_hub_ids_and_missing_data_skip_the_model_checks(world: Path) -> None:
    res = _validate(world, "--no-file-check", "data.train=not-there.jsonl")
    assert res.returncode == 0 and "positions:" not in res.stdout
    res = _validate(world, "model.name_or_path=someone/some-model")
    assert res.returncode == 0, res.stderr
    assert "model checks skipped" in res.stdout
