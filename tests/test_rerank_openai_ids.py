"""The `openai` backend scores identifiers by token id: exactly the window's ids through vLLM's
`logprob_token_ids` when the server has it (probed once per run), else the top-k with
`return_tokens_as_token_ids`, matched by id. A word token that decodes like an identifier (" A"
beside "A") is never merged into it. Runs against the in-suite loopback server
(`lrt.testing.openai_server`), which computes the tiny model's real logprobs."""
from __future__ import annotations

import pytest
import torch

from lrt.data.prompts import PromptTemplate, special_tokens
from lrt.errors import LrtError
from lrt.rerank import Reranker, RerankerMeta
from lrt.testing.openai_server import LogprobServer
from lrt.testing.tiny import random_examples, save_tiny_model


@pytest.fixture(scope="module")
def twin_export(tmp_path_factory):
    """A tiny export whose vocabulary has the word token " A" (a twin of the identifier "A") with the
    LM-head row of identifier "B": wherever B is likelier than A, so is the twin."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = save_tiny_model(tmp_path_factory.mktemp("twin") / "model", "chatml", seed=3)
    tok = AutoTokenizer.from_pretrained(d)
    assert tok.add_tokens([" A"]) == 1
    model = AutoModelForCausalLM.from_pretrained(d)
    model.resize_token_embeddings(len(tok))
    twin, a, b = tok.convert_tokens_to_ids([" A", "A", "B"])
    assert tok.decode([twin]) == " A" and tok.decode([twin]).strip() == tok.decode([a])
    with torch.no_grad():
        model.get_output_embeddings().weight[twin] = model.get_output_embeddings().weight[b]
    model.save_pretrained(d)
    tok.save_pretrained(d)
    tpl = PromptTemplate.preset("compact", max_passage_tokens=12)
    RerankerMeta(template=tpl.to_dict(), window=4, stride=2, max_length=512).save(d)
    return d


def queries(n: int = 4, n_cands: int = 7, seed: int = 7):
    return [(e.qid, e.query, e.candidates) for e in random_examples(n, n_cands, seed=seed)]


def assert_same(got, ref):
    for qid in ref:
        assert [d for d, _ in got[qid]] == [d for d, _ in ref[qid]], qid
        torch.testing.assert_close(torch.tensor([s for _, s in got[qid]]), torch.tensor([s for _, s in ref[qid]]),
                                   atol=1e-4, rtol=0)


@pytest.mark.parametrize("exact", [False, True], ids=["top_k", "logprob_token_ids"])
def test_twin_token_is_not_merged_into_the_identifier(twin_export, exact):
    local = Reranker.from_pretrained(twin_export, device="cpu")
    qs = queries()
    ref = local.rerank_many(qs)
    with LogprobServer(local.model, local.tok, logprob_token_ids=exact) as srv:
        # the top-k path over the whole vocabulary: the twin is always returned beside "A"
        rr = Reranker.from_openai(srv.url, "tiny", twin_export, logprobs=None if exact else len(local.tok))
        got = rr.rerank_many(qs)
    assert_same(got, ref)
    assert rr.last_stats.missing_identifiers == 0
    assert rr.last_stats.logprob_path == ("token_ids" if exact else "top_k")


def test_exact_path_by_default_one_probe_no_missing(twin_export):
    local = Reranker.from_pretrained(twin_export, device="cpu")
    qs = queries(3, 7)
    ref = local.rerank_many(qs)
    with LogprobServer(local.model, local.tok) as srv:
        rr = Reranker.from_openai(srv.url, "tiny", twin_export)
        got = rr.rerank_many(qs)
        got2 = rr.rerank_many(qs)  # support is probed once per backend, not once per call
    st = rr.last_stats
    assert st.logprob_path == "token_ids" and st.missing_identifiers == 0 and st.windows_with_missing == 0
    assert srv.requests == 2 * st.windows  # the probe is the first window's own request
    assert set(srv.asked_logprobs) == {1}
    assert_same(got, ref)
    assert_same(got2, ref)


def test_fallback_asks_a_fixed_top_k_and_counts_missing(twin_export):
    local = Reranker.from_pretrained(twin_export, device="cpu")
    qs = queries(3, 3)  # windows of 3: the old code asked for logprobs=3
    with LogprobServer(local.model, local.tok, logprob_token_ids=False) as srv:
        rr = Reranker.from_openai(srv.url, "tiny", twin_export)
        rr.rerank_many(qs)
    st = rr.last_stats
    assert st.logprob_path == "top_k" and st.top_logprobs == 20
    assert srv.asked_logprobs[1:] == [20] * st.windows  # [0]: the probe (logprobs=1 + logprob_token_ids)
    # what is missing is exactly what the model does not put in its top 20
    expect = 0
    for qid, q, cands in qs:
        ids = local.encode_window((qid, q, cands)).input_ids
        with torch.no_grad():
            logp = local.model(input_ids=torch.tensor([ids])).logits[0, -1].float().log_softmax(-1)
        top = set(logp.topk(20).indices.tolist())
        expect += sum(i not in top for i in local.identifier_ids(len(cands)))
    assert st.missing_identifiers == expect


def test_server_with_decoded_tokens_only_is_a_clear_error(twin_export):
    local = Reranker.from_pretrained(twin_export, device="cpu")
    with LogprobServer(local.model, local.tok, logprob_token_ids=False, token_ids=False) as srv:
        rr = Reranker.from_openai(srv.url, "tiny", twin_export)
        with pytest.raises(LrtError, match="return_tokens_as_token_ids"):
            rr.rerank_many(queries(1, 4))


@pytest.fixture(scope="module")
def full_export(tmp_path_factory):
    from transformers import AutoTokenizer

    d = save_tiny_model(tmp_path_factory.mktemp("full") / "m", "chatml", seed=1)
    tok = AutoTokenizer.from_pretrained(d)
    tok.add_special_tokens({"additional_special_tokens": special_tokens(100)}, replace_extra_special_tokens=False)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(d)
    n_old = model.get_output_embeddings().weight.shape[0]
    model.resize_token_embeddings(len(tok))
    w = model.get_output_embeddings().weight
    with torch.no_grad():  # distinct rows: resizing gives the 100 new identifiers (nearly) equal, tied scores
        w[n_old:] = torch.randn(len(tok) - n_old, w.shape[1], generator=torch.Generator().manual_seed(0)) * w.std()
    model.save_pretrained(d)
    tok.save_pretrained(d)
    tpl = PromptTemplate.preset("compact", identifiers="special", max_passage_tokens=3)
    RerankerMeta(template=tpl.to_dict(), window=100, stride=50, max_length=2048).save(d)
    return d


def test_full_mode_100_identifiers_in_one_request(full_export):
    d = full_export
    local = Reranker.from_pretrained(d, device="cpu", mode="full")
    qs = queries(2, 100, seed=3)
    ref = local.rerank_many(qs)
    with LogprobServer(local.model, local.tok) as srv:
        rr = Reranker.from_openai(srv.url, "tiny", d, mode="full")
        got = rr.rerank_many(qs)
    st = rr.last_stats
    assert srv.requests == 2 and st.windows == 2 and st.missing_identifiers == 0 and st.logprob_path == "token_ids"
    assert_same(got, ref)


def test_server_capping_logprobs_falls_back_and_says_how_to_fix(full_export, caplog):
    """vLLM started with the default --max-logprobs 20 refuses 100 logprob_token_ids: the top-20 path
    runs, 80 identifiers per query are counted missing, and the warning names --max-logprobs."""
    local = Reranker.from_pretrained(full_export, device="cpu", mode="full")
    with LogprobServer(local.model, local.tok, max_logprobs=20) as srv:
        rr = Reranker.from_openai(srv.url, "tiny", full_export, mode="full")
        with caplog.at_level("WARNING", logger="lrt"):
            rr.rerank_many(queries(2, 100, seed=3))
    st = rr.last_stats
    assert st.logprob_path == "top_k" and st.top_logprobs == 20
    assert st.missing_identifiers >= 2 * 80 and st.windows_with_missing == 2  # at most 20 of 100 returned
    assert "--max-logprobs >= 100" in caplog.text and "greater than max allowed: 20" in caplog.text
