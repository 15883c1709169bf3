"""Recipes: strict schema, dotted overrides, every problem at once, no tracebacks."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lrt.config import load_recipe, recipe_from_dict
from lrt.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))


def base(tmp_path) -> dict:
    row = {"qid": "1", "query": "q", "candidates": [{"docid": "a", "text": "x"}], "ranking": ["a"]}
    (tmp_path / "t.jsonl").write_text(json.dumps(row) + "\n")  # `lrt validate` checks the rows too
    return {"model": {"name_or_path": "x"}, "data": {"train": str(tmp_path / "t.jsonl")}, "output_dir": str(tmp_path / "o")}


def test_recipes_exist():
    names = {p.name for p in RECIPES}
    assert {"quickstart.yaml", "first-zephyr-7b.yaml", "first-mistral-7b.yaml"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_validates(path):
    # structure, types, losses and conflicts; data produced by `lrt prep` need not exist here
    r = load_recipe(path, check_files=False)
    assert r.loss and r.output_dir


def test_unknown_keys_dotted_path_and_did_you_mean(tmp_path):
    raw = base(tmp_path)
    raw["train"] = {"lr": 1e-5, "warmup_step": 3}
    raw["modle"] = {}
    with pytest.raises(ConfigError) as e:
        recipe_from_dict(raw, [])
    msg = str(e.value)
    assert "train.warmup_step: unknown key (did you mean 'train.warmup_steps'?)" in msg
    assert "modle: unknown key (did you mean 'model'?)" in msg
    assert len(e.value.problems) == 2  # all problems reported at once


def test_wrong_types_and_values_all_reported(tmp_path):
    raw = base(tmp_path)
    raw["train"] = {"lr": "fast", "grad_accum": 0}
    raw["loss"] = [{"name": "ranknett", "weight": 1.0}]
    with pytest.raises(ConfigError) as e:
        recipe_from_dict(raw, [])
    msg = str(e.value)
    assert "train.lr" in msg and "train.grad_accum" in msg


def test_unknown_loss_and_params(tmp_path):
    raw = base(tmp_path)
    raw["loss"] = [{"name": "ranknett"}, {"name": "lm", "params": {"chunk": 3}}]
    with pytest.raises(ConfigError) as e:
        recipe_from_dict(raw, [])
    msg = str(e.value)
    assert "did you mean 'ranknet'" in msg and "unknown lm param" in msg
    raw["loss"] = [{"name": "ranknet", "params": {"weighting": "firstt"}}]
    with pytest.raises(ConfigError, match="weighting"):
        recipe_from_dict(raw, [])


def test_cross_field_conflicts(tmp_path):
    raw = base(tmp_path)
    raw["model"]["quantization"] = {"bits": 4}
    raw["data"]["window"] = 40
    raw["eval"] = {"every": 10}
    with pytest.raises(ConfigError) as e:
        recipe_from_dict(raw, [])
    msg = str(e.value)
    assert "model.quantization needs model.lora" in msg
    assert "alpha identifiers stop at 26" in msg
    assert "no eval data" in msg


def test_missing_data_file(tmp_path):
    raw = base(tmp_path)
    raw["data"]["train"] = str(tmp_path / "nope.jsonl")
    with pytest.raises(ConfigError, match="data.train: file .*nope.jsonl.* not found"):
        recipe_from_dict(raw, [])


def test_dotted_overrides(tmp_path):
    r = recipe_from_dict(base(tmp_path), ["train.lr=1e-5", "loss[1].weight=5", "model.lora={r: 8}", "data.window=10"])
    assert r.train.lr == 1e-5 and r.loss[1].weight == 5 and r.model.lora.r == 8 and r.data.window == 10
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        recipe_from_dict(base(tmp_path), ["train.lr"])
    with pytest.raises(ConfigError, match="train.lrr"):
        recipe_from_dict(base(tmp_path), ["train.lrr=3"])


def test_cli_validate_no_traceback(tmp_path):
    raw = base(tmp_path)
    raw["train"] = {"lrr": 1}
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(raw))
    out = subprocess.run([sys.executable, "-m", "lrt.cli", "validate", str(p)], capture_output=True, text=True)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and "train.lrr: unknown key" in out.stderr
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(base(tmp_path)))
    ok = subprocess.run([sys.executable, "-m", "lrt.cli", "validate", str(good), "train.lr=1e-4"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("ok:")


def test_invalid_yaml_names_line(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("model:\n  name_or_path: [unclosed\n")
    with pytest.raises(ConfigError, match=r"invalid YAML:\d"):
        load_recipe(p)
