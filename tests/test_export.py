"""Export round trip (full fine-tuning): the end-of-training export and `lrt export RUN_DIR` both
load with plain `AutoModelForCausalLM.from_pretrained` and give the trained model's first-token
scores within 1e-5 (fp32). LoRA/QLoRA exports: tests/test_lora.py; DeepSpeed checkpoints:
tests/test_scale_multiproc.py."""
from __future__ import annotations

import json

import pytest
import torch

from lrt.config import recipe_from_dict
from lrt.errors import LrtError
from lrt.export import export_run
from lrt.workflows.run import Run as Trainer  # fit() also exports RUN/final, as `lrt train`
from _scale_helpers import max_diff, scores, windows
from test_train import tiny_recipe


@pytest.fixture(scope="module")
def trained_run(tiny_model_dir, tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "run"
    rec = tiny_recipe(tiny_model_dir, tiny_data, out, max_steps=3, save_every=2, lr=2e-2)
    t = Trainer(recipe_from_dict(rec, []))
    t.fit()
    return t, out


def test_final_export_and_lrt_export_reproduce_trained_scores(trained_run, tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from lrt.export_cli import main as export_main
    from lrt.rerank import Reranker

    t, out = trained_run
    items = windows(t.eval_examples)
    trained = scores(t.hf_model, t, items)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert max_diff(scores(base, t, items), trained) > 1e-3
    final = out / "final"
    for f in ("model.safetensors", "generation_config.json", "tokenizer.json", "lrt_reranker.json", "README.md"):
        assert (final / f).exists(), f
    assert max_diff(scores(AutoModelForCausalLM.from_pretrained(final), t, items), trained) <= 1e-5

    # step 3 was saved at the end (save_every is set), so `lrt export` sees the final weights
    assert json.loads((out / "checkpoints/step-0000003/trainer_state.json").read_text())["step"] == 3
    assert export_main([str(out), "--out", str(tmp_path / "exp")]) == 0
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "exp")
    assert max_diff(scores(exported, t, items), trained) <= 1e-5
    card = (tmp_path / "exp/README.md").read_text()
    assert "checkpoint step-0000003" in card and "train.jsonl" in card and "(step 3)" in card
    rr = Reranker.from_pretrained(tmp_path / "exp", window=5, stride=5)
    assert rr.score_windows(items)[0].shape == trained[0].shape

    # an older checkpoint on request, in bf16
    export_run(out, tmp_path / "old", checkpoint=str(out / "checkpoints/step-0000002"), dtype="bfloat16")
    old = AutoModelForCausalLM.from_pretrained(tmp_path / "old")
    assert old.dtype == torch.bfloat16 and "step-0000002" in (tmp_path / "old/README.md").read_text()


def test_export_errors_are_clear(trained_run, tmp_path):
    _, out = trained_run
    with pytest.raises(LrtError, match="not an lrt run directory"):
        export_run(tmp_path, tmp_path / "x")
    with pytest.raises(LrtError, match="needs a LoRA run"):
        export_run(out, tmp_path / "y", adapter_only=True)
    with pytest.raises(LrtError, match="not a complete lrt checkpoint"):
        export_run(out, tmp_path / "z", checkpoint=str(out / "checkpoints/.tmp-step-9"))
