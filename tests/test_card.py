"""Best-model export and the model card: with eval.select_best, final/ holds the best checkpoint's
weights and the card says which step and why; `lrt export --checkpoint` lists that checkpoint's own
metrics; the card has the Hugging Face metadata, the mode actually trained, and a plain-transformers
snippet that really ranks like lrt."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch
import yaml

from lrt.card import card_text, read_metrics
from lrt.cli import main as lrt_main
from lrt.config import recipe_from_dict


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


@pytest.fixture(scope="module")
def best_run(tiny_model_dir, tiny_data, tmp_path_factory):
    """Seeded run whose best evaluation is the untrained step 0 (lr 1e-3 hurts this tiny model's ranking)."""
    from lrt.workflows.run import train

    out = tmp_path_factory.mktemp("card") / "run"
    rec = {
        "model": {"name_or_path": str(tiny_model_dir)},
        "data": {"train": str(tiny_data / "train.jsonl"), "eval": str(tiny_data / "eval.jsonl"), "max_length": 512},
        "prompt": {"preset": "compact", "max_passage_tokens": 24},
        "train": {"max_steps": 8, "per_device_batch_size": 2, "grad_accum": 2, "lr": 1e-3, "log_every": 2,
                  "warmup_steps": 1, "save_every": 4, "keep_last": 1},
        "eval": {"every": 4, "select_best": True},
        "log": {"progress": False},
        "output_dir": str(out),
    }
    res = train(recipe_from_dict(rec, []))
    return res, out


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_final_is_the_best_checkpoint_and_card_says_why(best_run):
    res, out = best_run
    key = "eval/nDCG@10_candidates"
    hist = res.eval_history
    best = max(hist, key=lambda e: e[key])
    assert [e["step"] for e in hist] == [0, 4, 8]
    assert best["step"] != 8  # the scenario: the last step is not the best
    cp = out / "checkpoints" / f"step-{best['step']:07d}"
    assert cp.is_dir()  # protected from keep_last=1
    final, ckpt = _tensors(out / "final/model.safetensors"), _tensors(cp / "trainable.safetensors")
    common = set(final) & set(ckpt)
    assert len(common) >= 10 and all(torch.equal(final[k], ckpt[k]) for k in common)
    last = _tensors(out / "checkpoints/step-0000008/trainable.safetensors")
    assert any(not torch.equal(final[k], last[k]) for k in common)

    card = (out / "final/README.md").read_text()
    assert f"- exported from: checkpoint step-{best['step']:07d} of {out} (step {best['step']})" in card
    assert (f"- why this step: eval.select_best: the best nDCG@10_candidates ({best[key]:.4f}) of 3 evaluation(s), "
            f"at step {best['step']}") in card
    fm = front_matter(card)
    (result,) = fm["model-index"][0]["results"]
    assert result["metrics"][0]["value"] == round(best[key], 4)
    assert result["metrics"][1]["value"] == round(best["eval/initial_nDCG@10_candidates"], 4)
    assert result["dataset"]["name"] == "eval.jsonl (6 queries)"
    # the card's own evaluation table stops at the exported step
    assert f"| {best['step']} **(exported)** |" in card and "| 8 |" not in card


def test_export_checkpoint_card_lists_its_own_metrics(best_run, tmp_path):
    res, out = best_run
    assert lrt_main(["export", str(out), "--out", str(tmp_path / "e8"),
                     "--checkpoint", str(out / "checkpoints/step-0000008")]) == 0
    card = (tmp_path / "e8/README.md").read_text()
    e8 = res.eval_history[-1]
    assert front_matter(card)["model-index"][0]["results"][0]["metrics"][0]["value"] == \
        round(e8["eval/nDCG@10_candidates"], 4)
    assert "| 8 **(exported)** |" in card
    train8 = [r for r in read_metrics(out)[0] if r["step"] == 8][0]
    assert f"training loss at step 8 (mean over the last logging interval): " \
           f"{json.dumps({'loss': round(train8['loss'], 5), 'loss/lm': round(train8['loss/lm'], 5), 'loss/ranknet': round(train8['loss/ranknet'], 5)})}" in card


def test_card_metadata_and_trained_mode(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 5, "loss": 1.0, "loss/lm": 1.0}) + "\n"
                                       + json.dumps({"step": 5, "eval/nDCG@10": 0.7, "eval/initial_nDCG@10": 0.5,
                                                     "eval/queries": 43}) + "\n")
    base = {"model": {"name_or_path": "mistralai/Mistral-7B-Instruct-v0.2"},
            "data": {"train": "castorini/rank_zephyr_training_data", "eval": "dl19.jsonl"},
            "output_dir": str(run)}
    first = recipe_from_dict(base, [], check_files=False)  # default loss: lm + ranknet
    card = card_text(first, run, "end of training (step 5)", step=5)
    fm = front_matter(card)
    assert fm["base_model"] == "mistralai/Mistral-7B-Instruct-v0.2"
    assert fm["library_name"] == "transformers" and fm["pipeline_tag"] == "text-generation"
    assert fm["datasets"] == ["castorini/rank_zephyr_training_data"]  # the local eval file is not a Hub dataset
    assert {"lrt", "reranker", "first-token-scoring", "ranknet"} <= set(fm["tags"])
    m = fm["model-index"][0]["results"][0]
    assert m["task"]["type"] == "text-ranking" and m["metrics"][0]["value"] == 0.7
    assert "trec_eval, against the full qrels" in m["metrics"][0]["name"]
    assert "**Reranking mode trained:** first-token scoring (FIRST-style)" in card
    assert "## Training recipe" in card and "### rank_llm" in card and "from lrt import Reranker" in card

    gen = recipe_from_dict({**base, "loss": [{"name": "lm", "weight": 1.0}], "prompt": {"identifiers": "numeric"}},
                           [], check_files=False)
    card = card_text(gen, run, "end of training (step 5)", step=5)
    assert "**Reranking mode trained:** listwise generation" in card and "FIRST" not in card
    assert 'Reranker.from_pretrained("path/to/this/model", mode="generate")' in card
    assert "model.generate(" in card and "listwise-generation" in front_matter(card)["tags"]


def test_plain_transformers_snippet_ranks_like_lrt(best_run):
    """The card's transformers-only snippet, run as written, orders passages like lrt's Reranker."""
    from lrt.rerank import Reranker

    _, out = best_run
    final = out / "final"
    card = (final / "README.md").read_text()
    code = card.split("### Plain transformers")[1].split("```python\n")[1].split("```")[0]
    code = code.replace('"path/to/this/model"', repr(str(final)))
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(compile(code, "card-snippet", "exec"), {})
    printed = eval(buf.getvalue().strip())  # the snippet prints the passages best first
    ns: dict = {}
    exec("\n".join(x for x in code.splitlines() if x.startswith(("query =", "passages ="))), ns)
    query, passages = ns["query"], ns["passages"]
    assert len(passages) == 3
    rr = Reranker.from_pretrained(final)
    ranked = rr.rerank(query, [(f"d{i}", p) for i, p in enumerate(passages)])
    assert printed == [passages[int(d[1:])] for d, _ in ranked]


def test_select_best_without_kept_checkpoint_says_so(tiny_model_dir, tiny_data, tmp_path, caplog):
    """No train.save_every: the best step's weights were not kept; final/ is the last step and says why."""
    from lrt.workflows.run import train

    rec = {
        "model": {"name_or_path": str(tiny_model_dir)},
        "data": {"train": str(tiny_data / "train.jsonl"), "eval": str(tiny_data / "eval.jsonl"), "max_length": 512},
        "prompt": {"preset": "compact", "max_passage_tokens": 24},
        "train": {"max_steps": 4, "per_device_batch_size": 2, "grad_accum": 2, "lr": 1e-3, "warmup_steps": 1},
        "eval": {"every": 2, "select_best": True}, "log": {"progress": False}, "output_dir": str(tmp_path / "run"),
    }
    with caplog.at_level("WARNING", logger="lrt"):
        res = train(recipe_from_dict(rec, []))
    key = "eval/nDCG@10_candidates"
    best = max(res.eval_history, key=lambda e: e[key])
    card = (tmp_path / "run/final/README.md").read_text()
    if best["step"] == 4:  # the last step was the best: exported live, and the card says both
        assert f"at step 4 (the last step)" in card
    else:
        assert "was not checkpointed" in caplog.text
        assert (f"- why this step: the last step: the best evaluation (step {best['step']}) was not checkpointed "
                "(eval.select_best needs train.save_every to keep it)") in card
    assert "- exported from: end of training (step 4)\n" in card


def test_pointwise_card_names_the_pointwise_mode(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    r = recipe_from_dict({"model": {"name_or_path": "Qwen/Qwen3-Reranker-0.6B"}, "data": {"train": "t.jsonl"},
                          "prompt": {"preset": "qwen3_reranker"}, "scoring": {"mode": "pointwise"},
                          "loss": [{"name": "softmax_ce", "weight": 1.0}], "output_dir": str(run)}, [],
                         check_files=False)
    card = card_text(r, run, "end of training (step 1)", step=1)
    assert "**Reranking mode trained:** pointwise yes/no scoring" in card and "FIRST" not in card
    assert "pointwise-reranking" in front_matter(card)["tags"] and "--to-seq-cls" in card
