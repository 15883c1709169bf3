"""The scoring-family registry, and what a training run reports per family (issue 22/23): truncation
counted per passage, the pointwise summary in pair terms, the first-stage-order share of an evaluation."""
from __future__ import annotations

import json

import pytest
import yaml

from lrt.errors import LrtError


def test_registry_names_families_and_modes():
    from lrt import families

    assert families.get("first_token").rerank_modes == ("first_token", "full", "generate")
    assert families.get("pointwise").pairs and not families.get("first_token").pairs
    assert families.of_rerank_mode("full").name == "first_token"  # full-list <id_k> is a listwise mode
    assert families.rerank_modes() == ("first_token", "full", "generate", "pointwise")

    class Meta:
        mode = "pointwise"

    assert families.of_meta(Meta()).default_rerank_mode == "pointwise"
    with pytest.raises(LrtError, match=r"unknown scoring family 'pointwse' \(did you mean 'pointwise'\?\)"):
        families.get("pointwse")
    with pytest.raises(LrtError, match=r"unknown rerank mode 'ful' \(did you mean 'full'\?\)"):
        families.of_rerank_mode("ful")


def _train(recipe: dict, tmp_path, capsys, *overrides: str) -> tuple[dict, str]:
    from lrt.cli import main

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["train", str(path), *overrides]) == 0
    return json.loads((tmp_path / "run" / "run_summary.json").read_text()), capsys.readouterr().err


def _passage_lengths(tok, examples) -> list[int]:
    from lrt.data.prompts import passage_text

    return [len(tok(passage_text(c.text, c.title), add_special_tokens=False, split_special_tokens=True)["input_ids"])
            for e in examples for c in e.candidates]


def test_summary_counts_truncation_per_passage(tiny_model_dir, tiny_data, tmp_path, capsys):
    """57.8 % of passages cut read "1 cut to fit" before (lists were counted): now the share of passages."""
    from transformers import AutoTokenizer

    from lrt.data.schema import load_examples

    budget = 6
    rec = {"model": {"name_or_path": str(tiny_model_dir)},
           "data": {"train": str(tiny_data / "train.jsonl"), "max_length": 512},
           "prompt": {"preset": "compact", "max_passage_tokens": budget},
           "train": {"max_steps": 1, "per_device_batch_size": 2, "save_final": False},
           "eval": {"at_start": False, "at_end": False}, "log": {"progress": False},
           "output_dir": str(tmp_path / "run")}
    s, err = _train(rec, tmp_path, capsys)
    lens = _passage_lengths(AutoTokenizer.from_pretrained(tiny_model_dir),
                            load_examples(tiny_data / "train.jsonl")[0])
    cut = sum(n > budget for n in lens)
    assert 0 < cut < len(lens)
    ps = s["passages"]
    assert (ps["passages"], ps["sampled"], ps["cut"], ps["max_passage_tokens"]) == (len(lens), len(lens), cut, budget)
    assert ps["cut_share"] == pytest.approx(cut / len(lens)) and ps["tokens_max"] == max(lens)
    assert f"{len(lens)} (all); tokens p50 {ps['tokens_p50']}, p95 {ps['tokens_p95']}; " \
           f"{100 * cut / len(lens):.1f}% cut at prompt.max_passage_tokens={budget}" in err


def test_pointwise_summary_speaks_in_pairs(tiny_data, tmp_path, capsys):
    """data.max_length is a per-pair budget: the summary counts pairs and pairs cut, not list lengths."""
    from test_pointwise import save_pointwise_model
    from transformers import AutoTokenizer

    from lrt.config import recipe_from_dict
    from lrt.data.pointwise import encode_pair_cut
    from lrt.data.prompts import passage_text
    from lrt.data.schema import load_examples
    from lrt.families import of_recipe

    model = save_pointwise_model(tmp_path / "model")
    rec = {"model": {"name_or_path": model},
           "data": {"train": str(tiny_data / "train.jsonl"), "max_length": 256},
           "prompt": {"preset": "qwen3_reranker", "max_passage_tokens": 24},
           "scoring": {"mode": "pointwise"}, "loss": [{"name": "softmax_ce"}],
           "train": {"max_steps": 1, "per_device_batch_size": 2, "save_final": False},
           "eval": {"at_start": False, "at_end": False}, "log": {"progress": False},
           "output_dir": str(tmp_path / "run")}
    tok = AutoTokenizer.from_pretrained(model)
    r = recipe_from_dict(rec, [], check_files=False)
    template = of_recipe(r).template(r)
    exs = load_examples(tiny_data / "train.jsonl")[0]
    full = sorted(len(encode_pair_cut(tok, template, e.query, passage_text(c.text, c.title), 10**6)[0])
                  for e in exs for c in e.candidates)
    budget = full[len(full) // 2]  # about half the pairs are longer than this
    cut = sum(n > budget for n in full)
    assert 0 < cut < len(full)
    s, err = _train(rec, tmp_path, capsys, f"data.max_length={budget}")
    assert s["pairs"]["pairs"] == len(full) and s["pairs"]["truncated"] == cut and s["pairs"]["tokens_max"] == budget
    assert (f"train pairs   {len(full)} in {len(exs)} lists; tokens per pair p50 {s['pairs']['tokens_p50']}, "
            f"p95 {s['pairs']['tokens_p95']}, max {budget} (max_length {budget} per pair); {cut} pairs cut to fit") in err
    assert "tokens per list" not in err


def test_first_stage_share_and_its_warning(capsys):
    """A model that keeps the first-stage top 10 for (nearly) every query is flagged after training started."""
    from lrt.testing.tiny import random_examples
    from lrt.train.console import report_eval
    from lrt.train.evaluation import first_stage_share

    exs = random_examples(4, 12, seed=0)
    initial = {e.qid: [c.docid for c in e.candidates] for e in exs}
    moved = dict(initial)
    moved[exs[0].qid] = initial[exs[0].qid][::-1]  # one query reordered: 3 of 4 keep the input order
    assert first_stage_share(initial, exs) == 1.0 and first_stage_share(moved, exs) == 0.75
    tail = {q: d[:10] + d[10:][::-1] for q, d in initial.items()}  # below the top 10 does not count
    assert first_stage_share(tail, exs) == 1.0
    rec = {"eval/nDCG@10": 0.5, "eval/initial_nDCG@10": 0.5, "eval/queries": 4, "eval/first_stage_order": 1.0}
    report_eval({"step": 0, **rec}, [])
    err = capsys.readouterr().err
    assert "top 10 = first-stage order for 100%" in err and "warning" not in err  # before training: expected
    report_eval({"step": 5, **rec}, [])
    assert "warning: step 5: 100% of eval queries keep the first-stage order" in capsys.readouterr().err
    report_eval({"step": 5, **rec, "eval/first_stage_order": 0.75}, [])
    assert "warning" not in capsys.readouterr().err
