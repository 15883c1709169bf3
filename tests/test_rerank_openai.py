"""The `openai` reranking backend against a loopback completions server that computes a tiny HF
model's real logprobs for the prompt it receives: its orderings (and scores) equal the in-process
backend's; missing identifiers are counted; retries, generate mode and the CLI run for real."""
from __future__ import annotations

import json

import pytest
import torch

from lrt.cli import main as lrt_main
from lrt.data.prompts import PromptTemplate
from lrt.errors import LrtError
from lrt.io.trec import read_run
from lrt.rerank import Reranker, RerankerMeta
from lrt.rerank.openai import identifier_scores_by_id
from lrt.testing.openai_server import LogprobServer
from lrt.testing.tiny import random_examples, save_tiny_model


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    d = save_tiny_model(tmp_path_factory.mktemp("oa") / "model", "chatml", seed=3)
    tpl = PromptTemplate.preset("compact", max_passage_tokens=12)
    RerankerMeta(template=tpl.to_dict(), window=4, stride=2, max_length=512).save(d)
    return d


@pytest.fixture(scope="module")
def local(export):
    return Reranker.from_pretrained(export, device="cpu")


def queries(n: int = 3, n_cands: int = 7, seed: int = 7):
    return [(e.qid, e.query, e.candidates) for e in random_examples(n, n_cands, seed=seed)]


def test_match_by_id_only_and_missing_identifiers_below_returned():
    pairs = [("token_id:99", -0.2), ("token_id:10", -0.5), ("token_id:11", -2.0), ("token_id:42", -0.1),
             ("token_id:7", -3.0)]
    scores, missing = identifier_scores_by_id(pairs, [10, 11, 12, 42])
    assert scores == [-0.5, -2.0, -4.0, -0.1] and missing == 1  # 12 missing: min(returned) - 1
    with pytest.raises(LrtError, match="decoded token.*return_tokens_as_token_ids"):
        identifier_scores_by_id([(" A", -1.0), ("A", -0.5)], [10])


@pytest.mark.parametrize("fmt", ["text", "tokens"])
def test_first_token_orderings_and_scores_equal_in_process(export, local, fmt):
    qs = queries()
    ref = local.rerank_many(qs)
    with LogprobServer(local.model, local.tok) as srv:
        # top-k over the whole vocabulary: no identifier can be missing, so orders must match exactly
        rr = Reranker.from_openai(srv.url, "tiny", export, logprobs=len(local.tok), prompt_format=fmt, concurrency=3)
        got = rr.rerank_many(qs)
    st = rr.last_stats
    assert st.backend == "openai" and st.missing_identifiers == 0 and st.windows == local.last_stats.windows
    assert st.batches == st.windows == srv.requests  # one request per window
    for qid in ref:
        assert [d for d, _ in got[qid]] == [d for d, _ in ref[qid]]
        torch.testing.assert_close(torch.tensor([s for _, s in got[qid]]), torch.tensor([s for _, s in ref[qid]]),
                                   atol=1e-4, rtol=0)


def test_identifiers_missing_from_top_k_are_counted_and_ranked_last(export, local):
    qs = queries(2, 4)  # one window per query
    with LogprobServer(local.model, local.tok, logprob_token_ids=False) as srv:  # the top_k path
        rr = Reranker.from_openai(srv.url, "tiny", export, logprobs=2)
        got = rr.rerank_many(qs)
    st = rr.last_stats
    assert st.missing_identifiers >= 2 * 2 and st.windows_with_missing == 2  # 4 identifiers, at most 2 returned
    for qid, q, cands in qs:
        ids = local.encode_window((qid, q, cands)).input_ids  # prompt + "["
        with torch.no_grad():
            logp = local.model(input_ids=torch.tensor([ids])).logits[0, -1].float().log_softmax(-1)
        top2 = set(logp.topk(2).indices.tolist())
        id_ids = local.identifier_ids(len(cands))
        returned = sorted((j for j in range(len(cands)) if id_ids[j] in top2), key=lambda j: -float(logp[id_ids[j]]))
        missing = [j for j in range(len(cands)) if j not in returned]
        # the identifiers the server returned come first in the model's order, the missing ones after in place
        assert [d for d, _ in got[qid]] == [cands[j].docid for j in returned + missing]
        sc = [x for _, x in got[qid]]
        assert all(a > b for a, b in zip(sc, sc[1:]))


def test_retries_then_same_result_and_no_logprobs_is_a_clear_error(export, local):
    qs = queries(2, 5)
    ref = local.rerank_many(qs)
    with LogprobServer(local.model, local.tok, fail_first=2) as srv:
        rr = Reranker.from_openai(srv.url, "tiny", export, logprobs=len(local.tok), backoff_s=0.01)
        got = rr.rerank_many(qs)
        assert rr.backend.client.stats()["retry_http_5xx"] == 2
    assert {q: [d for d, _ in v] for q, v in got.items()} == {q: [d for d, _ in v] for q, v in ref.items()}
    with LogprobServer(local.model, local.tok, logprobs=False) as srv:
        rr = Reranker.from_openai(srv.url, "tiny", export)
        with pytest.raises(LrtError, match="without top logprobs.*--mode generate"):
            rr.rerank_many(qs)


def test_generate_mode_through_the_server_equals_in_process(export, local):
    qs = queries(2, 5)
    ref = local.rerank_many(qs, mode="generate")
    ref_stats = local.last_stats
    with LogprobServer(local.model, local.tok) as srv:
        rr = Reranker.from_openai(srv.url, "tiny", export, mode="generate")
        got = rr.rerank_many(qs)
    assert {q: [d for d, _ in v] for q, v in got.items()} == {q: [d for d, _ in v] for q, v in ref.items()}
    st = rr.last_stats
    assert (st.valid, st.duplicates, st.missing, st.out_of_range) == (
        ref_stats.valid, ref_stats.duplicates, ref_stats.missing, ref_stats.out_of_range)
    assert st.generated_tokens == ref_stats.generated_tokens > 0


def test_cli_openai_backend_writes_the_same_run(export, local, tmp_path, capsys):
    qs = queries(2, 6)
    run = tmp_path / "run.trec"
    run.write_text("".join(f"{q} Q0 {c.docid} {r} {10 - r} bm25\n" for q, _, cs in qs for r, c in enumerate(cs, 1)))
    (tmp_path / "topics.tsv").write_text("".join(f"{q}\t{t}\n" for q, t, _ in qs))
    (tmp_path / "corpus.tsv").write_text("".join(f"{c.docid}\t{c.text}\n" for _, _, cs in qs for c in cs))
    common = ["--run", str(run), "--queries", str(tmp_path / "topics.tsv"), "--corpus", str(tmp_path / "corpus.tsv")]
    assert lrt_main(["rerank", "--model", export, *common, "--out", str(tmp_path / "hf.trec")]) == 0
    with LogprobServer(local.model, local.tok, logprob_token_ids=False) as srv:  # the top_k path
        rc = lrt_main(["rerank", "--backend", "openai", "--base-url", srv.url, "--model", "tiny", "--export", export,
                       *common, "--out", str(tmp_path / "oa.trec"), "--logprobs", "2",
                       "--stats", str(tmp_path / "st.json")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "has no logprob_token_ids" in out and "identifiers missing from the top-2 logprobs" in out
    st = json.loads((tmp_path / "st.json").read_text())
    assert st["backend"] == "openai" and st["missing_identifiers"] > 0 and st["logprob_path"] == "top_k"
    with LogprobServer(local.model, local.tok) as srv:
        assert lrt_main(["rerank", "--backend", "openai", "--base-url", srv.url, "--model", "tiny", "--export", export,
                         *common, "--out", str(tmp_path / "oa2.trec"), "--logprobs", str(len(local.tok))]) == 0
    hf, oa = read_run(tmp_path / "hf.trec"), read_run(tmp_path / "oa2.trec")
    assert {q: [d for d, _ in v] for q, v in hf.items()} == {q: [d for d, _ in v] for q, v in oa.items()}
