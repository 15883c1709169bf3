"""The real workflow as a new user runs it, from a folder outside the repository with no sibling `shared` folder:
copy shipped jobs and a recipe, `lrt prep` (DL19 eval set from a TREC run + topics + qrels + MS MARCO-style
collection; RankZephyr conversations) -> `lrt train` (tiny model, the shipped FIRST recipe reading exactly
what the jobs wrote) -> `lrt rerank` a BM25 run -> `lrt eval`; then a BEIR folder through rerank and eval.
Every step is the installed `lrt` console script in a subprocess.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[1]
FIX = REPO / "tests" / "fixtures"
LRT = str(Path(sys.executable).parent / "lrt")


def lrt(cwd: Path, *args: str, timeout: int = 600) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "WANDB_MODE": "disabled", "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    p = subprocess.run([LRT, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    out = p.stdout + p.stderr
    assert "Traceback" not in out, out
    assert p.returncode == 0, f"lrt {' '.join(args)} -> {p.returncode}\n{out}"
    return p.stdout


@pytest.fixture()
def home(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("user") / "work"
    d.mkdir()
    assert REPO not in d.parents and not (d.parent / "shared").exists()
    shutil.copytree(FIX / "e2e" / "dl19", d / "dl19")
    shutil.copytree(FIX / "e2e" / "beir", d / "beir")
    (d / "data" / "msmarco").mkdir(parents=True)
    shutil.copy(FIX / "e2e" / "msmarco" / "collection.tsv", d / "data" / "msmarco" / "collection.tsv")
    shutil.copy(FIX / "prep" / "rankzephyr_sample.jsonl", d / "rank_zephyr_training_data.jsonl")
    return d


@pytest.mark.workflow
def test_prep_train_rerank_eval_from_a_fresh_folder(home, tiny_model_dir):
    run, topics, qrels = "dl19/run.dl19-passage.bm25.top10.txt", "dl19/msmarco-test2019-queries.tsv", \
        "dl19/qrels.dl19-passage.txt"
    for name in ("dl19-eval", "rankzephyr-import"):
        lrt(home, "recipes", "copy", name, ".")
    lrt(home, "recipes", "copy", "first-mistral-7b", "my.yaml")

    # prep: the DL19 evaluation set (corpus path as shipped: data/msmarco/collection.tsv beside the job)
    lrt(home, "prep", "dl19-eval.yaml", f"source.run={run}", f"source.topics={topics}", f"source.qrels={qrels}")
    rows = pq.read_table(home / "data" / "dl19-bm25-top100" / "data.parquet").to_pylist()
    assert len(rows) == 4 and all(len(r["candidates"]) == 10 for r in rows)
    judged = sum(1 for line in (home / qrels).read_text().splitlines())
    assert sum(len(r["qrels"]) for r in rows) == judged  # the full qrels are kept, not just the top-10's
    # prep: training data in the RankZephyr conversations schema
    lrt(home, "prep", "rankzephyr-import.yaml", "source.path=rank_zephyr_training_data.jsonl")
    assert pq.read_table(home / "data" / "rankzephyr" / "data.parquet").num_rows == 4

    # train the shipped FIRST recipe on exactly what the jobs wrote (its own data paths), tiny model
    out = lrt(home, "train", "my.yaml", f"model.name_or_path={tiny_model_dir}", "model.dtype=float32",
              "model.attn_implementation=sdpa", "model.gradient_checkpointing=false", "model.neftune_alpha=null",
              "train.precision=fp32", "train.deepspeed=null", "train.max_steps=2", "train.per_device_batch_size=2",
              "train.grad_accum=1", "train.save_every=null", "train.resume=none", "eval.every=null",
              "eval.select_best=false", "eval.at_start=false", "eval.batch_size=4", f"eval.qrels={qrels}",
              "data.max_length=1024", "prompt.max_passage_tokens=16", "log.wandb=disabled", "log.progress=false")
    final = home / "outputs" / "first-mistral-7b" / "final"
    assert (final / "lrt_reranker.json").is_file() and "exported" in out

    # rerank the BM25 run and evaluate both
    lrt(home, "rerank", "--model", str(final), "--run", run, "--queries", topics,
        "--corpus", "data/msmarco/collection.tsv", "--out", "reranked.trec", "--top-k", "10")
    res = json.loads(lrt(home, "eval", "--qrels", qrels, "--run", run, "--run", "reranked.trec", "--json"))
    text = json.dumps(res)
    assert "reranked.trec" in text and "nDCG@10" in text
    lines = (home / "reranked.trec").read_text().splitlines()
    assert len(lines) == 40 and {ln.split()[0] for ln in lines} == {"264014", "104861", "1114819", "130510"}

    # a BEIR folder: corpus.jsonl, queries.jsonl and qrels/test.tsv are found inside it
    beir = "beir/scifact-mini"
    lrt(home, "rerank", "--model", str(final), "--run", f"{beir}/bm25.trec", "--queries", beir, "--corpus", beir,
        "--out", "beir.trec", "--top-k", "6")
    res = json.loads(lrt(home, "eval", "--qrels", beir, "--run", "beir.trec", "--json"))
    assert "beir.trec" in json.dumps(res)
