"""In-training evaluation is trec_eval's nDCG@10 when the eval data carries the full qrels.

The shipped DL19 runs are imported with `lrt prep` (TREC run + topics + qrels; invented passage
texts), then `lrt train` evaluates a "model" that returns the run's order: a tiny Llama whose final
norm is zeroed, so every identifier score is exactly 0 and every window keeps its order. The logged
`eval/nDCG@10` must be the published trec_eval figure; with only the candidates' grades the
metric is logged under another name (`eval/nDCG@10_candidates`) and reads higher.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import yaml

from lrt.cli import main
from lrt.data.schema import load_examples, write_examples
from lrt.train.evaluation import eval_judgements, eval_ndcg, metric_keys

DATA = Path(__file__).resolve().parents[1] / "lrt" / "resources" / "data" / "fullrank"
RUNS = {"bm25": ("dl19-bm25_top100.txt", 0.5058, 0.5456),
        "rankmistral100": ("dl19-RankMistral100_top100_passnum-1.txt", 0.7255, 0.8006)}


@pytest.fixture(scope="module")
def identity_model(tiny_model_dir, tmp_path_factory) -> str:
    """A real tiny checkpoint whose scores are all 0: reranking keeps the given (run) order."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("identity") / "model"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.model.norm.weight.zero_()
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return str(out)


def prep_trec(run: str, out: Path) -> Path:
    job = {"name": f"dl19-{run}", "source": {
        "kind": "trec", "run": str(DATA / run), "topics": str(DATA / "dl19-topics.json"),
        "qrels": str(DATA / "qrels.dl19-passage.txt"), "synthetic_text": True},
        "output": {"dir": str(out)}}
    (out.parent / f"{out.name}.yaml").write_text(yaml.safe_dump(job))
    assert main(["prep", str(out.parent / f"{out.name}.yaml")]) == 0
    return out / "data.parquet"


def train_eval(model: str, train: Path, evaldata: Path, out: Path, capsys, *extra: str) -> tuple[dict, str]:
    recipe = {"model": {"name_or_path": model},
              "data": {"train": str(train), "eval": str(evaldata), "max_length": 1024, "window": 5},
              "prompt": {"preset": "compact", "max_passage_tokens": 8},
              "train": {"max_steps": 1, "per_device_batch_size": 2, "save_final": False},
              "eval": {"at_start": True, "at_end": False, "every": 1, "window": 26, "stride": 26, "batch_size": 16},
              "log": {"progress": False}, "output_dir": str(out)}
    (out.parent / f"{out.name}.yaml").write_text(yaml.safe_dump(recipe))
    capsys.readouterr()
    # at_end is off and every=1 with max_steps=1: the single evaluation is the one at step 0
    assert main(["train", str(out.parent / f"{out.name}.yaml"), "train.lr=1e-9", *extra]) == 0
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    ev = [r for r in recs if r.get("step") == 0 and any(k.startswith("eval/") for k in r)]
    assert len(ev) == 1
    return ev[0], capsys.readouterr().out


@pytest.mark.parametrize("name", list(RUNS))
def test_in_training_ndcg_is_trec_eval_with_full_qrels(name, identity_model, tiny_data, tmp_path, capsys):
    run, published, candidates_only = RUNS[name]
    rows = prep_trec(run, tmp_path / "prep")
    exs, _ = load_examples(rows)
    assert len(exs) == 43
    # prep kept every judged document, not only the 100 retrieved ones
    assert all(e.qrels and set(e.qrels) - {c.docid for c in e.candidates} for e in exs)

    ev, out = train_eval(identity_model, tiny_data / "train.jsonl", rows, tmp_path / "run", capsys)
    assert round(ev["eval/nDCG@10"], 4) == published
    assert round(ev["eval/initial_nDCG@10"], 4) == published  # the model returned the run's order
    assert ev["eval/queries"] == 43 and not any(k.endswith("_candidates") for k in ev)
    assert f"eval/nDCG@10 {published:.4f}" in out

    # The same rows without `qrels`: only the candidates' grades remain; named for what it is.
    bare = [dataclasses.replace(e, qrels=None) for e in exs]
    qrels, kind = eval_judgements(bare)
    assert metric_keys(kind) == ("eval/nDCG@10_candidates", "eval/initial_nDCG@10_candidates")
    assert round(eval_ndcg({e.qid: [c.docid for c in e.candidates] for e in exs}, qrels, kind), 4) == candidates_only

    if name == "bm25":  # eval.qrels: a TREC qrels file gives rows without `qrels` the trec_eval figure
        write_examples(bare, tmp_path / "bare.jsonl")
        ev3, out3 = train_eval(identity_model, tiny_data / "train.jsonl", tmp_path / "bare.jsonl", tmp_path / "run3",
                               capsys, f"eval.qrels={DATA / 'qrels.dl19-passage.txt'}")
        assert round(ev3["eval/nDCG@10"], 4) == published and f"eval/nDCG@10 {published:.4f}" in out3


def test_teacher_only_rows_are_named_teacher(tmp_path):
    from lrt.testing.tiny import random_examples
    from lrt.train.evaluation import eval_judgements, eval_ndcg, headline_key, metric_keys

    exs = random_examples(4, 5, graded=False)
    qrels, kind = eval_judgements(exs)
    assert kind == "teacher" and metric_keys(kind) == ("eval/nDCG@10_teacher", "eval/initial_nDCG@10_teacher")
    teacher = {e.qid: e.ranking for e in exs}
    assert eval_ndcg(teacher, qrels, kind) == pytest.approx(1.0)
    assert headline_key({"eval/nDCG@10_teacher": 1.0}) == "eval/nDCG@10_teacher"


def test_eval_qrels_file_must_cover_the_eval_queries(tmp_path):
    from lrt.errors import LrtError
    from lrt.testing.tiny import random_examples
    from lrt.train.evaluation import eval_judgements

    with pytest.raises(LrtError, match="none of the 2 eval query ids is judged"):
        eval_judgements(random_examples(2, 3), str(DATA / "qrels.dl19-passage.txt"))


def test_recipe_names_a_missing_eval_qrels_file(tiny_model_dir, tiny_data, tmp_path, capsys):
    recipe = {"model": {"name_or_path": tiny_model_dir},
              "data": {"train": str(tiny_data / "train.jsonl"), "eval": str(tiny_data / "eval.jsonl")},
              "eval": {"qrels": str(tmp_path / "nope.txt")}, "output_dir": str(tmp_path / "o")}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["validate", str(tmp_path / "r.yaml")]) == 2
    assert "eval.qrels: file" in capsys.readouterr().err
