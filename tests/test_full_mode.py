"""`full` mode end to end: FIRST scoring over 100 candidates in ONE window with `special`
identifiers trains on a tiny model, exports, reloads with `Reranker.from_pretrained`, and ranks
exactly as the in-training evaluation did; the 7B recipe for it validates."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lrt.config import load_recipe, recipe_from_dict
from lrt.data.prompts import special_tokens
from lrt.data.schema import write_examples
from lrt.rerank import Reranker, RerankerMeta
from lrt.testing.tiny import random_examples

REPO = Path(__file__).resolve().parents[1]
N = 100


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    from lrt.workflows.run import Run as Trainer  # fit() also exports RUN/final, as `lrt train`

    d = tmp_path_factory.mktemp("full100")
    write_examples(random_examples(3, N, seed=0), d / "train.jsonl")
    write_examples(random_examples(2, N, seed=1), d / "eval.jsonl")
    raw = {
        "model": {"name_or_path": str(tiny_model_dir)},
        "data": {"train": str(d / "train.jsonl"), "eval": str(d / "eval.jsonl"), "window": N, "max_length": 2048},
        "prompt": {"preset": "compact", "identifiers": "special", "max_passage_tokens": 4},
        "loss": [{"name": "lm"}, {"name": "ranknet", "weight": 10.0, "params": {"weighting": "first"}}],
        "train": {"max_steps": 2, "per_device_batch_size": 1, "lr": 1e-3, "log_every": 1, "warmup_steps": 0},
        "eval": {"at_start": False, "at_end": True, "window": N, "batch_size": 2},
        "log": {"progress": False},
        "output_dir": str(d / "run"),
    }
    recipe = recipe_from_dict(raw, [])
    trainer = Trainer(recipe)
    res = trainer.fit()
    return recipe, trainer, res


def test_full100_trains_exports_and_reranks(trained):
    recipe, trainer, res = trained
    assert res.steps == 2 and all(torch.isfinite(torch.tensor(h["loss"])) for h in res.history)
    meta = RerankerMeta.load(res.final_dir)
    assert meta.window == N and meta.template["identifiers"] == "special"
    rr = Reranker.from_pretrained(res.final_dir, mode="full", device="cpu")
    exs = trainer.eval_examples
    ranked = rr.rerank_many([(e.qid, e.query, e.candidates) for e in exs])
    assert rr.last_stats.windows == len(exs) and rr.last_stats.batches == 1  # one window of 100 per query
    for e in exs:
        docids = [d for d, _ in ranked[e.qid]]
        scores = [s for _, s in ranked[e.qid]]
        assert sorted(docids) == sorted(c.docid for c in e.candidates) and len(docids) == N
        assert all(a > b for a, b in zip(scores, scores[1:]))
        # the exported model ranks exactly like the in-training evaluation of the in-memory model
        assert docids == trainer.last_rankings[e.qid]


def test_full100_special_rows_were_trained(trained):
    from lrt.modeling import load_model, load_tokenizer

    recipe, trainer, res = trained
    tok0 = load_tokenizer(recipe)
    base = load_model(recipe, tok0)  # the numeral-initialised rows training started from
    rr = Reranker.from_pretrained(res.final_dir, mode="full", device="cpu")
    ids = tok0.convert_tokens_to_ids(special_tokens(N))
    assert ids == rr.tok.convert_tokens_to_ids(special_tokens(N))
    before = base.get_input_embeddings().weight[ids]
    after = rr.model.get_input_embeddings().weight[ids]
    assert (after - before).abs().amax(-1).min() > 1e-6  # every <id_k> row moved


def test_full100_recipe_validates():
    path = REPO / "recipes" / "first-full100-qwen-7b.yaml"
    r = load_recipe(path, check_files=False)  # its data come from `lrt prep data_prep/fullrank-import.yaml`
    assert r.identifier_scheme() == "special" and r.data.window == N
    assert r.model.dtype == "bfloat16" and r.model.gradient_checkpointing
    assert [(t.name, t.weight) for t in r.loss] == [("lm", 1.0), ("ranknet", 10.0)]
    assert r.loss[1].params.get("weighting") == "first"
