"""Bad config input (issue 11): dotted overrides, recipe files and prep job files, through the real CLI.

Every case asserts exit code 2, an `error:` line naming the key (or file) and the fix, and no
traceback anywhere in the output.
"""
from __future__ import annotations

import subprocess
import sys
import traceback
from pathlib import Path

import pytest

from lrt.cli import main

REPO = Path(__file__).resolve().parents[1]
DEMO_JOB = REPO / "lrt" / "resources" / "data_prep" / "demo-offline.yaml"
ROW = ('{"qid": "q1", "query": "q", "candidates": [{"docid": "a", "text": "x"}, {"docid": "b", "text": "y"}], '
       '"ranking": ["b", "a"]}\n')
RECIPE = "model: {name_or_path: x}\ndata: {train: t.jsonl}\noutput_dir: out\n"


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """`lrt ARGV` in-process; an escaping exception is a traceback the user would have seen."""
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse
        rc = int(e.code or 0)
    except BaseException:  # noqa: BLE001 - report it as the user would see it
        rc, tb = -1, traceback.format_exc()
        out = capsys.readouterr()
        return rc, out.out + out.err + tb
    out = capsys.readouterr()
    return rc, out.out + out.err


def assert_clean_error(rc: int, out: str, *expect: str) -> None:
    assert "Traceback" not in out, out
    assert rc == 2, out
    assert sum(line.startswith(("error:", "lrt prep: error:")) for line in out.splitlines()) == 1, out
    for e in expect:
        assert e in out, f"{e!r} not in:\n{out}"


@pytest.fixture()
def recipe(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.jsonl").write_text(ROW)
    p = tmp_path / "r.yaml"
    p.write_text(RECIPE)
    return p


OVERRIDES = [
    (["loss[x].weight=1"], ["loss[x].weight=1", "is not a list index", "loss[0]"]),
    (["loss[1.weight=1"], ["unclosed '['", "loss[1].weight"]),
    (["log=5", "log.wandb=offline"], ["log is not a section (it holds 5)", "log={wandb: ...}"]),
    (["loss.weight=5"], ["loss is a list: index it, e.g. loss[0].weight"]),
    (["loss[-5].weight=5"], ["[-5]: negative indices are not supported"]),
    (["loss[7].weight=5"], ["index [7] out of range: loss has 2 item(s) (use 0..1)"]),
    (["train..lr=1"], ["empty section name"]),
    (["=3"], ["expected KEY=VALUE, e.g. train.lr=1e-5"]),
    (["train.lr"], ["expected KEY=VALUE"]),
    (["train.lrr=1"], ["train.lrr: unknown key (did you mean 'train.lr'?)"]),
    (["train.lr=.inf"], ["train.lr: inf is not a finite number"]),
    (["train.lr=1.0e300"], ["train.lr: Input should be less than or equal to 1"]),
    (["loss[1].weight=.inf"], ["loss[1].weight: inf is not a finite number"]),
    (["loss[0].params.alpha=.nan"], ["loss[0].params.alpha: nan is not a finite number"]),
    (["train.betas=[2,3]"], ["train.betas[0]: Input should be less than 1", "train.betas[1]"]),
    (["train.eps=-1"], ["train.eps: Input should be greater than 0"]),
    (["train.seed=99999999999999999999"], ["train.seed: Input should be less than 4294967296"]),
    (["train.epochs=.inf"], ["train.epochs: inf is not a finite number"]),
    (["output_dir=''"], ["output_dir: String should have at least 1 character"]),
    (["output_dir=t.jsonl"], ["output_dir:", "is a file, not a directory"]),
    (["model.config_overrides=5"], ["model.config_overrides: Input should be a valid dictionary"]),
    (["model.config_overrides=[1, 2]"], ["model.config_overrides: Input should be a valid dictionary"]),
    (["train.deepspeed=missing.json"], ["train.deepspeed: file", "shipped: lrt:resources/launch/ds_zero2.json"]),
]


@pytest.mark.parametrize("overrides,expect", OVERRIDES, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_overrides(recipe, capsys, overrides, expect):
    assert_clean_error(*run_cli(["validate", str(recipe), *overrides], capsys), *expect)


RECIPE_FILES = [
    ("dir.yaml", None, ["is a directory, not a recipe YAML file"]),
    ("latin1.yaml", b"model: {name_or_path: caf\xe9}\n", ["line 1: not UTF-8 text (byte 0xe9)", "save the recipe as UTF-8"]),
    ("empty.yaml", b"", ["the recipe file is empty"]),
    ("list.yaml", b"- a\n- b\n", ["must be a YAML mapping of sections"]),
    ("broken.yaml", b"model:\n  name_or_path: [unclosed\n", ["invalid YAML:3"]),
    ("missing.yaml", ..., ["recipe file", "not found"]),
    ("od.yaml", (RECIPE.replace("output_dir: out", "output_dir: ''")).encode(), ["output_dir: String should have at least 1"]),
    ("inf.yaml", (RECIPE + "train: {lr: .inf}\nloss: [{name: lm, weight: .inf}]\n").encode(),
     ["train.lr: inf is not a finite number", "loss[0].weight: inf is not a finite number"]),
    ("optim.yaml", (RECIPE + "train: {betas: [2, 3], eps: -1, seed: 99999999999999999999, epochs: .inf}\n").encode(),
     ["train.betas[0]", "train.eps", "train.seed", "train.epochs"]),
]


@pytest.mark.parametrize("name,content,expect", RECIPE_FILES, ids=[c[0] for c in RECIPE_FILES])
def test_bad_recipe_files(recipe, capsys, name, content, expect):
    p = recipe.parent / name
    if content is None:
        p.mkdir()
    elif content is not ...:
        p.write_bytes(content)
    assert_clean_error(*run_cli(["validate", str(p)], capsys), *expect)


def test_utf8_bom_recipe_is_read(recipe, capsys):
    p = recipe.parent / "bom.yaml"
    p.write_bytes(b"\xef\xbb\xbf" + RECIPE.encode())
    rc, out = run_cli(["validate", str(p)], capsys)
    assert rc == 0 and out.startswith("ok:"), out


def test_config_overrides_of_the_wrong_type_at_model_build(recipe, capsys, tiny_model_dir, tiny_data):
    argv = ["train", str(recipe), f"model.name_or_path={tiny_model_dir}", "model.init=from_config",
            f"data.train={tiny_data / 'train.jsonl'}", "model.config_overrides={num_hidden_layers: two}",
            f"output_dir={recipe.parent / 'run'}", "log.progress=false", "eval.at_start=false", "eval.at_end=false"]
    assert_clean_error(*run_cli(argv, capsys), "model.config_overrides: wrong type for num_hidden_layers='two'")


JOB_CASES = [
    ("dir", None, [], ["is a directory, not a job YAML file"]),
    ("latin1", b"name: caf\xe9\n", [], ["not UTF-8 text (byte 0xe9)", "save the job as UTF-8"]),
    ("list", b"- a\n", [], ["the job must be a YAML mapping"]),
    ("empty", b"", [], ["the job file is empty"]),
    ("overrides", "demo", ["labels[0]=1", "teacher.delay_s=.inf", "source.kind=nope", "labels.window=.inf",
                           "prompt..preset=x", "labels.windw=3"],
     ["labels is not a list", "teacher.delay_s: inf is not a finite number", "source.kind: unknown kind 'nope'",
      "labels.window: inf is not a finite number", "empty section name",
      "labels.windw: unknown key (did you mean 'labels.window'?)"]),
]


@pytest.mark.parametrize("name,content,overrides,expect", JOB_CASES, ids=[c[0] for c in JOB_CASES])
def test_bad_prep_job_files(tmp_path, monkeypatch, capsys, name, content, overrides, expect):
    monkeypatch.chdir(tmp_path)
    p = tmp_path / f"{name}.yaml"
    if content is None:
        p.mkdir()
    elif content == "demo":
        p = DEMO_JOB
    else:
        p.write_bytes(content)
    assert_clean_error(*run_cli(["prep", str(p), *overrides, "--check"], capsys), *expect)


def test_console_script_bad_override_no_traceback(recipe):
    """The same through a separate process, as a shell user runs it."""
    p = subprocess.run([sys.executable, "-m", "lrt.cli", "validate", str(recipe), "loss[x].weight=1"],
                       capture_output=True, text=True, timeout=120)
    assert_clean_error(p.returncode, p.stdout + p.stderr, "is not a list index")
