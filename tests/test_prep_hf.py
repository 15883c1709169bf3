"""The `hf` teacher end to end on a tiny random Llama (offline): garbage answers, repaired labels.

A random model cannot rank, which is the point: every window goes through the repair path, and
the job must still write complete permutations and count what it repaired.
"""
from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import yaml

from lrt.data.prompts import PromptTemplate
from lrt.data.schema import write_examples
from lrt.prep.job import load_job, run_shard
from lrt.prep.teachers import WindowRequest
from lrt.testing.tiny import random_examples, save_tiny_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model gains nothing from threads; on a busy box they cost 10x
    yield save_tiny_model(tmp_path_factory.mktemp("tiny") / "model", "chatml")
    torch.set_num_threads(threads)


def test_hf_teacher_job_repairs_garbage_into_complete_labels(tmp_path, model_dir):
    write_examples(random_examples(3, 8, seed=3), tmp_path / "rows.jsonl")
    job = {"name": "hf-tiny", "source": {"kind": "canonical", "path": str(tmp_path / "rows.jsonl")},
           "teacher": {"kind": "hf", "model": model_dir, "batch_size": 2, "dtype": "float32"},
           # a random model's answers are all repaired: allowed here on purpose (the default fails the job)
           "labels": {"window": 4, "stride": 2, "mode": "freeze_prefix", "max_invalid_fraction": 1.0},
           "prompt": {"preset": "compact", "max_passage_tokens": 16},
           "output": {"dir": str(tmp_path / "out")}}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    card = run_shard(load_job(tmp_path / "job.yaml"))
    c = card["counts"]
    assert c["rows_written"] == 3 and c["calls"] == 3 * 6  # N=8, w=4, s=2: 3 + 2 + 1 windows per query
    assert c["invalid_responses"] >= 1 and c["missing"] >= 1
    assert card["provenance"]["teacher"]["kind"] == "hf"
    rows = pq.read_table(tmp_path / "out" / "data.parquet").to_pylist()
    for r in rows:
        assert sorted(r["ranking"]) == sorted(x["docid"] for x in r["candidates"])
    calls = pq.read_table(tmp_path / "out" / "calls" / "part-00000-of-00001.parquet").to_pylist()
    assert all(sorted(x["order"]) == list(range(x["end"] - x["start"])) for x in calls)
    again = run_shard(load_job(tmp_path / "job.yaml"), force=True)  # answers replayed from the cache
    # refusals (no identifier at all) are never cached: they are asked again, every other answer is replayed
    assert again["counts"]["cache_hits"] == again["counts"]["calls"] - c["refused"]
    assert pq.read_table(tmp_path / "out" / "data.parquet").to_pylist() == rows


def test_batched_generation_matches_one_by_one(model_dir):
    from lrt.prep.hf_teacher import HFTeacher

    template = PromptTemplate.preset("compact")
    reqs = [WindowRequest(f"q{i}", f"query number {i} " * (i + 1), tuple(f"d{j}" for j in range(3 + i)),
                          tuple(f"passage {j} text " * (j + 1) for j in range(3 + i))) for i in range(3)]
    batched = HFTeacher(model=model_dir, template=template, batch_size=3, dtype="float32")
    single = HFTeacher(model=model_dir, template=template, batch_size=1, dtype="float32")
    seen = []
    a = batched.rank_windows(reqs, on_response=lambda i, r: seen.append(i))
    b = single.rank_windows(reqs)
    assert sorted(seen) == [0, 1, 2]
    assert [r.raw for r in a] == [r.raw for r in b]  # left padding does not change greedy answers
    assert all(sorted(r.parsed.order) == list(range(len(q.docids))) for r, q in zip(a, reqs))
