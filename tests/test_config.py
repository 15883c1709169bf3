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


def test_paths_resolve_against_the_recipe_file_and_overrides_against_cwd(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "t.jsonl").write_text("{}\n")
    (tmp_path / "b" / "u.jsonl").write_text("{}\n")
    (tmp_path / "a" / "r.yaml").write_text("model: {name_or_path: lrt:assets/tiny-backbone}\ndata: {train: t.jsonl}\n"
                                           "train: {deepspeed: lrt:resources/launch/ds_zero2.json}\noutput_dir: ../runs/x\n")
    monkeypatch.chdir(tmp_path / "b")
    r = load_recipe("../a/r.yaml")
    assert r.data.train == str(tmp_path / "a" / "t.jsonl")
    assert r.output_dir == str(tmp_path / "runs" / "x")
    assert r.model.name_or_path == "lrt:assets/tiny-backbone" and r.train.deepspeed.startswith("lrt:resources/")
    r = load_recipe(tmp_path / "a" / "r.yaml", ["data.train=u.jsonl", "output_dir=out"])
    assert r.data.train == str(tmp_path / "b" / "u.jsonl") and r.output_dir == str(tmp_path / "b" / "out")


def test_validate_a_shipped_recipe_from_another_directory(tmp_path):
    for name in ("first-mistral-7b.yaml", "first-mistral-7b-lora.yaml"):
        p = subprocess.run([sys.executable, "-m", "lrt.cli", "validate", "--no-file-check", str(REPO / "recipes" / name)],
                           cwd=tmp_path, capture_output=True, text=True)
        assert p.returncode == 0 and p.stdout.startswith("ok:"), p.stderr
    r = load_recipe(REPO / "recipes" / "first-mistral-7b.yaml", check_files=False)
    assert r.train.deepspeed == "lrt:resources/launch/ds_zero3.json"
    # `../data` of recipes/ is the data/ folder of the checkout (where the shipped prep jobs write)
    assert r.data.train == str(REPO / "data" / "rankzephyr" / "data.parquet")


def test_recipes_list_and_copy_keep_a_copy_valid(tmp_path, monkeypatch, capsys):
    from lrt.cli import main
    from lrt.prep.config import load_job

    monkeypatch.chdir(tmp_path)
    assert main(["recipes", "list"]) == 0
    listed = capsys.readouterr().out
    assert "first-mistral-7b " in listed and "dl19-eval" in listed and "ds_zero3.json" in listed
    assert main(["recipes", "copy", "first-mistral-7b", "my.yaml"]) == 0
    assert main(["recipes", "copy", "dl19-eval", "."]) == 0
    assert main(["recipes", "copy", "rankzephyr-import", "."]) == 0
    assert main(["recipes", "copy", "first-mistral-7b", "my.yaml"]) == 2  # no silent overwrite
    assert "exists" in capsys.readouterr().err
    assert main(["recipes", "copy", "first-mistral-7bb", "x.yaml"]) == 2
    assert "did you mean 'first-mistral-7b'" in capsys.readouterr().err
    text = (tmp_path / "my.yaml").read_text()
    assert "# FirstMistral" in text  # comments kept
    r = load_recipe(tmp_path / "my.yaml", check_files=False)
    assert r.data.train == str(tmp_path / "data" / "rankzephyr" / "data.parquet")
    assert r.output_dir == str(tmp_path / "outputs" / "first-mistral-7b")
    assert r.train.deepspeed == "lrt:resources/launch/ds_zero3.json"
    # the copied jobs still write exactly where the copied recipe reads
    assert load_job(tmp_path / "dl19-eval.yaml").output.dir == str(Path(r.data.eval).parent)
    assert load_job(tmp_path / "rankzephyr-import.yaml").output.dir == str(Path(r.data.train).parent)


def test_dry_run_prints_the_launch_command_without_data(tmp_path):
    env = {**__import__("os").environ, "DRY_RUN": "1"}
    p = subprocess.run([sys.executable, "-m", "lrt.cli", "train", str(REPO / "recipes" / "first-mistral-7b.yaml"),
                        "--nproc-per-node", "8"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "torch.distributed.run" in p.stdout and "--nproc_per_node 8" in p.stdout
