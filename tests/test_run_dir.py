"""A used output_dir: a fresh run refuses it, `train.overwrite_output_dir` replaces it, and
`train.resume=auto` continues it only under a compatible recipe (it says what changed)."""
from __future__ import annotations

import json

import pytest
import yaml

from lrt.cli import main


@pytest.fixture(scope="module")
def recipe(tiny_model_dir, tiny_data, tmp_path_factory):
    p = tmp_path_factory.mktemp("rundir") / "r.yaml"
    p.write_text(yaml.safe_dump({
        "model": {"name_or_path": str(tiny_model_dir)},
        "data": {"train": str(tiny_data / "train.jsonl"), "max_length": 512},
        "prompt": {"preset": "compact", "max_passage_tokens": 24},
        "train": {"max_steps": 4, "per_device_batch_size": 2, "lr": 1e-3, "schedule": "constant", "log_every": 1,
                  "save_every": 2, "keep_last": 1, "save_final": False},
        "eval": {"at_start": False, "at_end": False},
        "log": {"progress": False},
        "output_dir": "unused",
    }))
    return p


@pytest.fixture(scope="module")
def used(recipe, tmp_path_factory):
    """An output_dir holding a finished 4-step run (checkpoint step-4, keep_last 1)."""
    out = tmp_path_factory.mktemp("used") / "run"
    assert main(["train", str(recipe), f"output_dir={out}"]) == 0
    return out


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_fresh_run_refuses_a_used_output_dir(recipe, used, capsys):
    before = sorted(p.name for p in (used / "checkpoints").iterdir())
    assert main(["train", str(recipe), f"output_dir={used}", "train.max_steps=2"]) == 2
    line = error_line(capsys)
    assert f"output_dir {used} already holds a run" in line
    assert "train.resume=auto" in line and "train.overwrite_output_dir=true" in line
    assert sorted(p.name for p in (used / "checkpoints").iterdir()) == before  # untouched


def test_overwrite_output_dir_replaces_the_old_run(recipe, used, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(used, out)
    assert main(["train", str(recipe), f"output_dir={out}", "train.max_steps=2", "train.overwrite_output_dir=true"]) == 0
    ck = out / "checkpoints"
    # the old step-4 is gone (it would have outranked, and pruned, the new run's step-2)
    assert sorted(p.name for p in ck.glob("step-*")) == ["step-0000002"]
    assert (ck / "latest").read_text() == "step-0000002"
    assert [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_resume_auto_refuses_an_incompatible_recipe_and_names_the_changes(recipe, used, capsys):
    args = ["train", str(recipe), f"output_dir={used}", "train.resume=auto"]
    assert main(args + ["train.lr=0.5", "loss=[{name: listnet}]", "train.per_device_batch_size=4"]) == 2
    line = error_line(capsys)
    assert "was trained with a different recipe" in line
    for change in ("train.lr: 0.001 -> 0.5", "loss[0].name: 'lm' -> 'listnet'", "loss.length: 2 -> 1",
                   "global batch (train.per_device_batch_size x train.grad_accum x processes): 2 x 1 x 1 = 2 -> "
                   "4 x 1 x 1 = 4"):
        assert change in line, line
    assert "train.max_steps" not in line


def test_resume_auto_accepts_harmless_changes(recipe, used, tmp_path, caplog):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(used, out)
    with caplog.at_level("INFO", logger="lrt"):
        assert main(["train", str(recipe), f"output_dir={out}", "train.resume=auto", "train.max_steps=6",
                     "train.log_every=2", "eval.at_end=false", "train.save_final=false"]) == 0
    assert f"resumed from {out / 'checkpoints/step-0000004'} at step 4" in caplog.text
    steps = [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 6]


def test_resume_auto_in_an_empty_dir_starts_fresh(recipe, tmp_path):
    assert main(["train", str(recipe), f"output_dir={tmp_path / 'new'}", "train.resume=auto", "train.max_steps=2"]) == 0
    assert (tmp_path / "new/checkpoints/latest").read_text() == "step-0000002"


def test_resume_compares_the_grouping_the_run_actually_used():
    """data.group_by_length's default follows the global batch: 1 x 4 -> 2 x 2 keeps it (the same
    lists every step); turning it off changes every later step's lists, so resume must name it; the
    cache settings change only where the tokenised stores live and are harmless."""
    from lrt.train.checkpoint import recipe_changes

    a = {"train": {"per_device_batch_size": 1, "grad_accum": 4}, "data": {"group_by_length": None, "cache_dir": "x"}}
    b = {"train": {"per_device_batch_size": 2, "grad_accum": 2}, "data": {"group_by_length": None, "cache_dir": "y"}}
    assert recipe_changes(a, b) == []
    b["data"]["group_by_length"] = False
    assert recipe_changes(a, b) == ["data.group_by_length: True -> False"]
