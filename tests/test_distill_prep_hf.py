"""`lrt prep` with an hf teacher and labels.teacher_scores: each one-window list keeps the teacher's
first-token identifier log-probs (checked against an unpadded forward here), longer lists keep none and
are counted, and a re-run gives the same scores."""
from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import torch
import yaml

from lrt.data.schema import write_examples
from lrt.prep.job import load_job, run_shard
from lrt.testing.tiny import random_examples, save_tiny_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield save_tiny_model(tmp_path_factory.mktemp("tiny") / "model", "chatml")
    torch.set_num_threads(threads)


def test_hf_teacher_scores_are_its_first_token_logprobs(tmp_path, model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lrt.data.collate import identifier_token_ids
    from lrt.data.prompts import PromptTemplate, encode_prompt, render_prompt

    exs = random_examples(3, 4, seed=5) + random_examples(1, 6, seed=6)
    exs[3].qid = "long"
    write_examples(exs, tmp_path / "rows.jsonl")
    job = {"name": "hf-scores", "source": {"kind": "canonical", "path": str(tmp_path / "rows.jsonl")},
           "teacher": {"kind": "hf", "model": model_dir, "batch_size": 2, "dtype": "float32"},
           "labels": {"window": 4, "stride": 2, "teacher_scores": True, "max_invalid_fraction": 1.0},  # an untrained teacher
           "prompt": {"preset": "compact", "max_passage_tokens": 16},
           "output": {"dir": str(tmp_path / "out")}}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    card = run_shard(load_job(tmp_path / "job.yaml"))
    assert card["counts"]["lists_with_teacher_scores"] == 3 and card["counts"]["lists_without_teacher_scores"] == 1
    rows = {r["qid"]: r for r in pq.read_table(tmp_path / "out" / "data.parquet").to_pylist()}
    assert rows["long"]["teacher_scores"] is None  # 6 > window 4: scores of different prompts are not comparable
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tpl = PromptTemplate.preset("compact")
    ids = identifier_token_ids(tok, tpl, 4)
    for ex in exs[:3]:
        prompt = render_prompt(tok, tpl, ex.query, [c.text for c in ex.candidates], 16)
        x = torch.tensor([encode_prompt(tok, tpl, prompt + "[")["input_ids"]])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=x).logits[0, -1].double(), -1)
        got = rows[ex.qid]["teacher_scores"]
        assert got == pytest.approx([float(logp[i]) for i in ids], abs=1e-5)
        assert all(v < 0 for v in got) and len(set(got)) == 4
    again = run_shard(load_job(tmp_path / "job.yaml"), force=True)
    # this untrained teacher's answers are refusals, which are never cached (they are asked again), so the
    # re-run recomputes the scores: the same rows come out
    assert again["counts"]["calls"] == card["counts"]["calls"]
    assert {r["qid"]: r for r in pq.read_table(tmp_path / "out" / "data.parquet").to_pylist()} == rows
