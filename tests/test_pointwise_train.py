"""`lrt train` with scoring.mode=pointwise on a tiny CPU model: groups of pairs, sampled negatives,
chunked pair forwards; exact resume of the sampling; 2 processes equal 1 process."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from test_pointwise import save_pointwise_model


@pytest.fixture(scope="module")
def pw_model(tmp_path_factory) -> str:
    return save_pointwise_model(tmp_path_factory.mktemp("pw") / "model")


@pytest.fixture(scope="module")
def pw_recipe(pw_model, tiny_data, tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("pwr") / "recipe.yaml"
    p.write_text(yaml.safe_dump({
        "model": {"name_or_path": pw_model},
        "data": {"train": str(tiny_data / "train.jsonl"), "max_length": 256, "padding_side": "left"},
        "prompt": {"preset": "qwen3_reranker", "max_passage_tokens": 24},
        "scoring": {"mode": "pointwise", "negatives": 3, "pair_batch": 3},
        "loss": [{"name": "softmax_ce"}, {"name": "bce", "weight": 0.5}],
        "train": {"max_steps": 4, "per_device_batch_size": 1, "grad_accum": 2, "lr": 1e-3, "log_every": 1},
        "eval": {"at_start": False, "at_end": False},
        "log": {"progress": False},
        "output_dir": "unused",
    }))
    return p


def _metrics(d: Path) -> list[dict]:
    return [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]


def test_lrt_train_pointwise_end_to_end(pw_recipe, tmp_path, capsys):
    from lrt.cli import main
    from lrt.rerank import RerankerMeta

    out = tmp_path / "run"
    eval_file = Path(yaml.safe_load(pw_recipe.read_text())["data"]["train"]).parent / "eval.jsonl"
    assert main(["train", str(pw_recipe), f"output_dir={out}", f"data.eval={eval_file}", "eval.at_end=true"]) == 0
    m = _metrics(out)
    evals = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if "eval/nDCG@10" in x]
    assert len(evals) == 1 and 0 < evals[0]["eval/nDCG@10_candidates"] <= 1 and evals[0]["eval/queries"] == 6
    assert [r["step"] for r in m] == [1, 2, 3, 4]
    assert all(r["lists"] == 2 and r["loss/softmax_ce"] > 0 and r["loss/bce"] > 0 for r in m)
    # 4 sampled candidates (top-1 + 3): the softmax CE of an untrained model is near log 4
    assert abs(m[0]["loss/softmax_ce"] - 1.386) < 0.3
    meta = RerankerMeta.load(out / "final")
    assert meta.mode == "pointwise" and meta.template["suffix"].endswith("</think>\n\n")


def test_pointwise_recipe_errors(pw_recipe, tmp_path, capsys):
    from lrt.cli import main

    rc = main(["train", str(pw_recipe), f"output_dir={tmp_path}/x", "loss=[{name: lm}, {name: ranknet}]"])
    assert rc == 2 and "remove loss terms ['lm']" in capsys.readouterr().err
    rc = main(["train", str(pw_recipe), f"output_dir={tmp_path}/y", "scoring.mode=first_token"])
    assert rc == 2 and "set scoring.mode=pointwise" in capsys.readouterr().err


@pytest.mark.slow
def test_two_processes_equal_one(pw_recipe, tmp_path):
    """Same global batch (2 lists): 1 process x 2 accumulation vs 2 processes x 1; losses and grad
    norms per step agree, i.e. the sampled groups and the global normalisation are the same."""
    from _scale_helpers import last_per_step, metrics, run
    from lrt.config import load_recipe
    from lrt.workflows.run import train

    one = tmp_path / "one"
    train(load_recipe(pw_recipe, [f"output_dir={one}", "train.save_final=false", "train.max_steps=2"]))
    two = tmp_path / "two"
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "lrt.cli",
         "train", str(pw_recipe), f"output_dir={two}", "train.grad_accum=1", "train.save_final=false", "train.max_steps=2"], timeout=240)
    got, want = last_per_step(metrics(two)), metrics(one)
    assert [r["step"] for r in got] == [1, 2]
    for g, w in zip(got, want):
        for k in ("loss", "loss/softmax_ce", "loss/bce"):
            assert g[k] == pytest.approx(w[k], rel=1e-5), (g["step"], k)
        assert g["grad_norm"] == pytest.approx(w["grad_norm"], rel=1e-4)
        assert g["lists"] == w["lists"] == 2


@pytest.mark.slow
def test_resume_draws_the_same_groups(pw_recipe, tmp_path):
    """Steps 3-4 of a run resumed from its step-2 checkpoint equal those of an uninterrupted run: the
    sampled negatives depend on (seed, step, list) only."""
    from lrt.config import load_recipe
    from lrt.workflows.run import train

    common = ["train.schedule=constant", "train.save_final=false", "train.save_every=2"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(load_recipe(pw_recipe, [f"output_dir={straight}", *common]))
    train(load_recipe(pw_recipe, [f"output_dir={resumed}", "train.max_steps=2", *common]))
    train(load_recipe(pw_recipe, [f"output_dir={resumed}", "train.resume=auto", *common]))
    want = {r["step"]: r for r in _metrics(straight)}
    got = {r["step"]: r for r in _metrics(resumed)}
    for step in (3, 4):
        for k in ("loss/softmax_ce", "loss/bce", "grad_norm"):
            assert got[step][k] == pytest.approx(want[step][k], rel=1e-6), (step, k)
