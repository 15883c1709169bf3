"""LiPO-lambda trains against a frozen reference model: the LoRA base with adapters disabled, or a
frozen copy of the initial policy for full fine-tuning. The reference never moves."""
from __future__ import annotations

import pytest
import torch

from lrt.config import recipe_from_dict
from lrt.train.loop import Trainer


def _recipe(model_dir, data_dir, out, lora: bool) -> dict:
    raw = {
        "model": {"name_or_path": str(model_dir)},
        "data": {"train": str(data_dir / "train.jsonl"), "max_length": 512},
        "prompt": {"preset": "compact", "max_passage_tokens": 16},
        "loss": [{"name": "lipo_lambda", "weight": 1.0, "params": {"beta": 0.5}}],
        "train": {"max_steps": 3, "per_device_batch_size": 4, "lr": 5e-3, "save_final": False},
        "eval": {"at_end": False, "at_start": False},
        "log": {"progress": False},
        "output_dir": str(out),
    }
    if lora:
        raw["model"]["lora"] = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    return raw


@pytest.mark.parametrize("lora", [True, False], ids=["lora-disabled-adapter", "full-ft-frozen-copy"])
def test_lipo_reference_is_frozen(lora, tiny_model_dir, tiny_data, tmp_path):
    t = Trainer(recipe_from_dict(_recipe(tiny_model_dir, tiny_data, tmp_path / "r", lora), []))
    batch = t.collate([t.rows[i] for i in range(4)])
    ref0 = t.module.reference_logprobs(batch).clone()
    trainable = {n for n, p in t.module.named_parameters() if p.requires_grad}
    assert not any("_reference" in n for n in trainable)  # the optimizer cannot touch the reference
    before = {n: p.detach().clone() for n, p in t.module.named_parameters() if p.requires_grad}
    hist = [t.train_step() for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in hist)
    moved = any(not torch.equal(before[n], p) for n, p in t.module.named_parameters() if p.requires_grad)
    assert moved
    torch.testing.assert_close(t.module.reference_logprobs(batch), ref0, atol=0, rtol=0)
    # at step 0 policy == reference: every LiPO score was 0, so the first loss is the tie value > 0
    assert hist[0]["loss/lipo_lambda"] > 0


def test_lipo_beta_validated(tiny_model_dir, tiny_data, tmp_path):
    from lrt.errors import ConfigError

    raw = _recipe(tiny_model_dir, tiny_data, tmp_path / "b", True)
    raw["loss"][0]["params"]["beta"] = -1
    with pytest.raises(ConfigError, match="beta"):
        recipe_from_dict(raw, [])
