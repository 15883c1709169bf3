"""The length-grouping default depends on the global batch only: 1 x 8, 2 x 4 and 8 x 1
(micro-batch x accumulation) train on the same lists and give the same loss and gradient norm
through `lrt train` (with the old default, on only for a micro-batch > 1, 1 x 8 trained on other
lists: its gradients differed by ~40 %)."""
from __future__ import annotations

import json
import sys

import pytest
import yaml

from _scale_helpers import last_per_step, metrics, run

pytestmark = pytest.mark.slow  # the module trains every split of the global batch (~24 s of setup)

SPLITS = [(1, 8), (2, 4), (8, 1)]


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tiny_data, tmp_path_factory):
    base = tmp_path_factory.mktemp("group")
    (base / "r.yaml").write_text(yaml.safe_dump({
        "model": {"name_or_path": str(tiny_model_dir)},
        "data": {"train": str(tiny_data / "train.jsonl"), "max_length": 512},
        "prompt": {"preset": "compact", "max_passage_tokens": 24},
        "train": {"max_steps": 3, "lr": 1e-3, "schedule": "constant", "log_every": 1, "save_every": 3,
                  "save_final": False},
        "eval": {"at_start": False, "at_end": False},
        "log": {"progress": False},
        "output_dir": "unused",
    }))
    out = {}
    for pd, ga in SPLITS:
        d = base / f"run-{pd}x{ga}"
        run([sys.executable, "-m", "lrt.cli", "train", str(base / "r.yaml"), f"output_dir={d}",
             f"train.per_device_batch_size={pd}", f"train.grad_accum={ga}"])
        out[(pd, ga)] = d
    return out


def test_every_split_of_the_global_batch_trains_the_same_lists(runs):
    ref = last_per_step(metrics(runs[SPLITS[0]]))
    assert [r["step"] for r in ref] == [1, 2, 3]
    for split in SPLITS[1:]:
        got = last_per_step(metrics(runs[split]))
        for a, b in zip(ref, got):
            assert b["lists"] == a["lists"] == 8
            assert b["loss"] == pytest.approx(a["loss"], rel=1e-5), (split, a, b)
            assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4), (split, a, b)


def test_the_checkpoint_records_grouping_on_for_a_micro_batch_of_one(runs):
    r = yaml.safe_load((runs[(1, 8)] / "recipe.resolved.yaml").read_text())
    assert r["data"].get("group_by_length") is None  # the default, resolved by the global batch
    st = json.loads((runs[(1, 8)] / "checkpoints/step-0000003/trainer_state.json").read_text())
    assert st["group_by_length"] is True
