"""`lrt rerank`'s stats (issue 23): truncation counted per passage (share cut at the template's
max_passage_tokens, p50/p95 passage tokens), pointwise runs reported in pairs, and the first-stage-
order diagnostic (share of queries whose reranked top-10 is the input top-10), warned about when
nearly every query kept its input order. Each figure is checked against an independent computation
from the input and output files."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lrt.cli import main as lrt_main
from lrt.data.prompts import PromptTemplate
from lrt.io.trec import read_run
from lrt.rerank import RerankerMeta

WORDS = "the quick brown fox jumps over a lazy dog near river bank".split()


def write_inputs(d: Path, n_queries: int, n_docs: int) -> dict[str, str]:
    docs = {f"q{q}": [f"q{q}d{i}" for i in range(n_docs)] for q in range(n_queries)}
    (d / "run.trec").write_text("".join(f"{q} Q0 {doc} {r} {100 - r} bm25\n" for q, ds in docs.items()
                                        for r, doc in enumerate(ds, 1)))
    (d / "topics.tsv").write_text("".join(f"{q}\tquery {q} fox\n" for q in docs))
    # passages of 2..13 words: some longer than the 6-token budget below, some not
    (d / "corpus.tsv").write_text("".join(f"{doc}\t{' '.join(WORDS[: 2 + (i * 5 + int(q[1:])) % 12])}\n"
                                          for q, ds in docs.items() for i, doc in enumerate(ds)))
    return {"run": str(d / "run.trec"), "queries": str(d / "topics.tsv"), "corpus": str(d / "corpus.tsv"),
            "out": str(d / "out.trec"), "stats": str(d / "stats.json")}


def rerank_argv(f: dict[str, str], model: str, *extra: str) -> list[str]:
    return ["rerank", "--model", model, "--run", f["run"], "--queries", f["queries"], "--corpus", f["corpus"],
            "--out", f["out"], "--stats", f["stats"], "--device", "cpu", *extra]


def independent_first_stage(f: dict[str, str], k: int = 10) -> tuple[int, int]:
    """(queries whose output top-k equals the input top-k, queries) from the two TREC files."""
    before, after = read_run(f["run"]), read_run(f["out"])
    same = sum([d for d, _ in after[q]][:k] == [d for d, _ in before[q]][:k] for q in before)
    return same, len(before)


def passage_tokens(model: str, corpus: str) -> list[int]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    texts = [line.split("\t", 1)[1].rstrip("\n") for line in Path(corpus).read_text().splitlines(keepends=True)]
    return [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]


@pytest.fixture(scope="module")
def listwise_model(tmp_path_factory):
    from lrt.testing.tiny import save_tiny_model

    d = save_tiny_model(tmp_path_factory.mktemp("stats") / "model", "chatml")
    RerankerMeta(template=PromptTemplate.preset("compact", max_passage_tokens=6).to_dict(), window=5, stride=2,
                 max_length=512).save(d)
    return d


def test_listwise_stats_count_passages_and_first_stage(listwise_model, tmp_path, capsys):
    f = write_inputs(tmp_path, n_queries=3, n_docs=8)
    assert lrt_main(rerank_argv(f, listwise_model)) == 0
    out = capsys.readouterr().out
    st = json.loads(Path(f["stats"]).read_text())
    lens = passage_tokens(listwise_model, f["corpus"])
    cut = sum(n > 6 for n in lens)
    assert 0 < cut < len(lens)  # the inputs exercise both sides of the budget
    assert (st["passages"], st["passages_cut"], st["max_passage_tokens"]) == (24, cut, 6)
    p50, p95 = np.percentile(lens, [50, 95], method="nearest")
    assert (st["passage_tokens_p50"], st["passage_tokens_p95"]) == (int(p50), int(p95))
    same, n = independent_first_stage(f)
    assert (st["first_stage_same"], st["first_stage_queries"], st["first_stage_k"]) == (same, n, 10)
    assert st["unit"] == "window" and "window 5, stride 2" in out
    assert f"passages: 24; tokens p50 {int(p50)}, p95 {int(p95)}; {100 * cut / 24:.1f}% cut at max_passage_tokens=6" in out
    assert f"first-stage order: {same}/3 queries" in out


def test_pointwise_stats_are_in_pairs(tmp_path, capsys):
    from lrt.data.pointwise import PointwiseTemplate
    from test_pointwise import save_pointwise_model

    model = save_pointwise_model(tmp_path / "pw", seed=5)
    t = PointwiseTemplate.preset("qwen3_reranker", max_passage_tokens=6)
    RerankerMeta(template=t.to_dict(), window=8, stride=1, max_length=256, bos="none", mode="pointwise").save(model)
    f = write_inputs(tmp_path, n_queries=2, n_docs=5)
    assert lrt_main(rerank_argv(f, model)) == 0
    out = capsys.readouterr().out
    st = json.loads(Path(f["stats"]).read_text())
    assert st["unit"] == "pair" and st["windows"] == 10 and st["passages"] == 10
    assert "one sequence per query-passage pair" in out and "10 pairs)" in out
    assert "window 1" not in out and "windows" not in out
    lens = passage_tokens(model, f["corpus"])
    assert st["passages_cut"] == sum(n > 6 for n in lens)
    same, n = independent_first_stage(f)
    assert (st["first_stage_same"], st["first_stage_queries"]) == (same, n)


def test_a_model_that_keeps_the_input_order_is_warned_about(tmp_path):
    """A model with a zero LM head scores every identifier alike, so every window keeps its order:
    `lrt rerank` (the real process) reports 12/12 and warns on stderr."""
    import torch

    from lrt.testing.tiny import build_tokenizer, tiny_llama

    tok = build_tokenizer("chatml")
    model = tiny_llama(len(tok), hidden=64, layers=2, seed=0, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id)
    with torch.no_grad():
        model.get_output_embeddings().weight.zero_()
    d = tmp_path / "flat"
    model.save_pretrained(d)
    tok.save_pretrained(d)
    RerankerMeta(template=PromptTemplate.preset("compact").to_dict(), window=4, stride=2, max_length=512).save(d)
    f = write_inputs(tmp_path, n_queries=12, n_docs=6)
    p = subprocess.run([sys.executable, "-m", "lrt.cli", *rerank_argv(f, str(d))], capture_output=True, text=True,
                       timeout=300, env=os.environ.copy())
    assert p.returncode == 0, p.stderr[-2000:]
    assert independent_first_stage(f) == (12, 12)
    assert "first-stage order: 12/12 queries (100.0%) kept their input top-10 order" in p.stdout
    warn = [x for x in p.stderr.splitlines() if "kept their first-stage top-10 order" in x]
    assert len(warn) == 1 and "12 of 12 queries (100.0%)" in warn[0] and "lrt eval --baseline" in warn[0]
    assert json.loads(Path(f["stats"]).read_text())["first_stage_share"] == 1.0
