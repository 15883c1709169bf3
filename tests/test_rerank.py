"""Reranker: padding/batching invariance, the first-token logits path, full and generate modes.

The full-logits reference test is the one the FIRST anchors lacked (rank_llm silently replaced
first-token scoring by generation for months): a plain HF forward on `prompt + "["` must give the
same identifier logits as lrt's hidden-state x identifier-rows path.
"""
from __future__ import annotations

import pytest
import torch

from lrt.data.collate import identifier_token_ids
from lrt.data.prompts import PromptTemplate, render_prompt, special_tokens
from lrt.data.schema import Candidate
from lrt.errors import LrtError
from lrt.rerank import Reranker, RerankerMeta, sliding_windows
from lrt.testing.tiny import build_tokenizer, random_examples, tiny_llama

ATOL = 1e-5


def _items(n_items: int = 5, seed: int = 0) -> list[tuple[str, list[Candidate]]]:
    """Windows of different sizes and lengths, so batches really pad."""
    exs = random_examples(n_items, 6, seed=seed)
    return [(e.query, e.candidates[: 3 + i % 4]) for i, e in enumerate(exs)]


@pytest.fixture(scope="module")
def tiny():
    tok = build_tokenizer("chatml")
    model = tiny_llama(len(tok), seed=1).eval()
    tpl = PromptTemplate.preset("compact", max_passage_tokens=12)
    return model, tok, tpl


def test_sliding_windows_schedule():
    w = sliding_windows(100, 20, 10)
    assert len(w) == 9 and w[0] == (80, 100) and w[-1] == (0, 20)
    assert sliding_windows(25, 20, 10) == [(5, 25), (0, 15)]
    assert sliding_windows(7, 20, 10) == [(0, 7)]


def test_batched_equals_unbatched_and_left_equals_right(tiny):
    model, tok, tpl = tiny
    items = _items()
    ref = Reranker(model, tok, tpl, window=6, stride=3, batch_size=1).score_windows(items)
    for side in ("left", "right"):
        for bs in (2, 5):
            got = Reranker(model, tok, tpl, window=6, stride=3, batch_size=bs, padding_side=side).score_windows(items)
            for r, g in zip(ref, got):
                assert r.shape == g.shape
                torch.testing.assert_close(g, r, atol=ATOL, rtol=0)


@pytest.mark.parametrize("style,scheme", [("chatml", "alpha"), ("zephyr", "alpha"), ("mistral", "alpha"),
                                          ("llama3", "special")])
def test_first_token_scores_equal_full_logits(style, scheme):
    """log_softmax(logits[0, -1])[id_ids] of a plain forward on prompt + '[' == Reranker scores (batched,
    padded): the scores are the identifiers' log-probabilities over the full vocabulary row."""
    tok = build_tokenizer(style)
    if scheme == "special":
        tok.add_special_tokens({"additional_special_tokens": special_tokens(6)}, replace_extra_special_tokens=False)
    model = tiny_llama(len(tok), seed=2, tie=False).eval()
    tpl = PromptTemplate.preset("compact", max_passage_tokens=12, identifiers=scheme)
    items = _items(seed=3)
    got = Reranker(model, tok, tpl, window=6, stride=3, batch_size=3, padding_side="left").score_windows(items)
    id_ids = identifier_token_ids(tok, tpl, 6)
    for (q, cands), g in zip(items, got):
        text = render_prompt(tok, tpl, q, [c.text for c in cands]) + "["
        ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logp = model(input_ids=ids).logits[0, -1].float().log_softmax(-1)
        torch.testing.assert_close(g, logp[id_ids[: len(cands)]], atol=ATOL, rtol=0)


def test_rerank_many_batched_equals_single_queries(tiny):
    model, tok, tpl = tiny
    exs = random_examples(3, 9, seed=4)
    rr = Reranker(model, tok, tpl, window=4, stride=2, batch_size=8)
    together = rr.rerank_many([(e.qid, e.query, e.candidates) for e in exs])
    assert rr.last_stats.windows == 3 * len(sliding_windows(9, 4, 2))
    for e in exs:
        alone = rr.rerank(e.query, e.candidates)
        assert [d for d, _ in alone] == [d for d, _ in together[e.qid]]
        scores = [s for _, s in alone]
        assert sorted({d for d, _ in alone}) == sorted(c.docid for c in e.candidates)
        assert all(a > b for a, b in zip(scores, scores[1:]))


def test_rerank_rejects_duplicates_and_handles_tiny_lists(tiny):
    model, tok, tpl = tiny
    rr = Reranker(model, tok, tpl, window=4, stride=2)
    c = Candidate("d1", "text")
    with pytest.raises(LrtError, match="appears twice"):
        rr.rerank("q", [c, c])
    assert rr.rerank("q", []) == []
    assert rr.rerank("q", [c]) == [("d1", 1.0)]
    with pytest.raises(LrtError, match="unknown rerank mode"):
        rr.rerank("q", [c], mode="fast")  # type: ignore[arg-type]


def test_full_mode_needs_enough_single_token_identifiers(tiny):
    model, tok, tpl = tiny
    cands = random_examples(1, 30)[0].candidates
    with pytest.raises(LrtError, match="prompt.identifiers=special"):
        Reranker(model, tok, tpl, window=4, stride=2).rerank("q", cands, mode="full")
    tok2 = build_tokenizer("chatml")
    tok2.add_special_tokens({"additional_special_tokens": special_tokens(10)}, replace_extra_special_tokens=False)
    rr = Reranker(tiny_llama(len(tok2)), tok2, tpl.with_(identifiers="special"), window=4, stride=2)
    with pytest.raises(LrtError, match=r"only <id_1>..<id_10>"):
        rr.rerank("q", cands, mode="full")
    ranked = rr.rerank("q", cands[:10], mode="full")
    assert rr.last_stats.windows == 1 and rr.last_stats.batches == 1 and len(ranked) == 10


def test_generate_random_model_reports_valid_share(tiny):
    model, tok, tpl = tiny
    cands = random_examples(1, 5, seed=5)[0].candidates
    rr = Reranker(model, tok, tpl, window=5, stride=2, mode="generate", gen_margin=4)
    ranked = rr.rerank("fox", cands)
    st = rr.last_stats
    assert sorted(d for d, _ in ranked) == sorted(c.docid for c in cands)
    assert st.windows == 1 and st.generated_tokens > 0
    assert st.valid_share is not None and 0.0 <= st.valid_share <= 1.0
    assert st.valid + (st.duplicates + st.out_of_range + st.missing > 0) == 1  # valid xor repaired


def test_generate_parses_special_identifiers_and_stops_at_eos(tiny, monkeypatch):
    """A scripted model answering `[<id_3>] > [<id_1>] > [<id_2>]` + EOS + junk: the special tokens
    must survive decoding (skip_special_tokens would erase them) and the junk after EOS is ignored."""
    _, _, tpl = tiny
    tok = build_tokenizer("chatml")
    tok.add_special_tokens({"additional_special_tokens": special_tokens(3)}, replace_extra_special_tokens=False)
    model = tiny_llama(len(tok)).eval()
    answer = tok("[<id_3>] > [<id_1>] > [<id_2>]", add_special_tokens=False)["input_ids"]
    junk = tok("[<id_2>] [<id_2>]", add_special_tokens=False)["input_ids"]
    seen = {}

    def fake_generate(input_ids, attention_mask, generation_config):
        seen["rows"] = input_ids.shape[0]
        new = torch.tensor(answer + [tok.eos_token_id] + junk).expand(input_ids.shape[0], -1)
        return torch.cat([input_ids, new], dim=1)

    monkeypatch.setattr(model, "generate", fake_generate)
    rr = Reranker(model, tok, tpl.with_(identifiers="special"), window=3, stride=1, mode="generate")
    cands = [Candidate(f"d{i}", f"passage {i}") for i in (1, 2, 3)]
    out = rr.rerank_many([("a", "q", cands), ("b", "q", cands)])
    assert [d for d, _ in out["a"]] == ["d3", "d1", "d2"] == [d for d, _ in out["b"]]
    assert seen["rows"] == 2 and rr.last_stats.valid_share == 1.0


def test_meta_roundtrip_and_errors(tmp_path):
    RerankerMeta(template=PromptTemplate.preset("compact").to_dict(), window=20, stride=10, max_length=512).save(tmp_path)
    (tmp_path / "lrt_reranker.json").write_text(
        (tmp_path / "lrt_reranker.json").read_text().replace('"window"', '"future_key": 1, "window"'))
    assert RerankerMeta.load(tmp_path).window == 20
    with pytest.raises(LrtError, match="lrt export"):
        RerankerMeta.load(tmp_path / "nope")
    with pytest.raises(LrtError, match="not a directory"):
        Reranker.from_pretrained(tmp_path / "nope")


def test_bench_rerank_prints_json_lines_and_ratios(capsys):
    from lrt.cli.bench.rerank import main as bench

    assert bench(["--queries", "2", "--candidates", "8", "--window", "4", "--stride", "2", "--passage-tokens", "6",
                  "--hidden", "32", "--layers", "1"]) == 0
    import json

    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    rows = {r["mode"]: r for r in lines if "mode" in r}
    assert set(rows) == {"first_token", "generate", "full"}
    for r in rows.values():
        assert {"ms_per_query", "windows_per_query", "prompt_tokens_per_query", "generated_tokens_per_query"} <= set(r)
    assert rows["full"]["windows_per_query"] == 1 and rows["first_token"]["windows_per_query"] == 3
    assert rows["generate"]["generated_tokens_per_query"] > 0 and rows["generate"]["valid_share"] is not None
    summary = lines[-1]
    assert summary["ratios"]["generate/first_token"] > 1  # decoding ~4 tokens/id vs one forward per window
    assert 0 < summary["first_token_saving_vs_generate"] < 1 and "what" in summary


def test_bench_rerank_openai_backend_against_loopback_server(capsys):
    """`lrt bench rerank --backends hf,openai`: the same windows through the loopback server, labelled CPU."""
    import json

    from lrt.cli.bench.rerank import main as bench

    assert bench(["--queries", "2", "--candidates", "6", "--window", "4", "--stride", "2", "--passage-tokens", "6",
                  "--hidden", "32", "--layers", "1", "--modes", "first_token", "--backends", "hf,openai"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    rows = {(r["backend"], r["mode"]): r for r in lines if "mode" in r}
    assert set(rows) == {("hf", "first_token"), ("openai", "first_token")}
    hf, oa = rows["hf", "first_token"], rows["openai", "first_token"]
    assert hf["windows_per_query"] == oa["windows_per_query"] == 2
    assert hf["prompt_tokens_per_query"] == oa["prompt_tokens_per_query"]  # the very same prompts
    assert oa["calls"] == 2 * 2 and "missing_identifiers_per_query" in oa  # one request per window
    summary = lines[-1]
    assert summary["ratios"]["openai/hf first_token"] > 0 and "CPU" in summary["what"]


def test_score_rule_monotone_and_single_window_scores_are_logprobs(tiny):
    from lrt.rerank import SCORE_STEP, monotone_scores

    assert monotone_scores([-1.0, -0.5, -3.0, -3.0]) == [-1.0, -1.0 - SCORE_STEP, -3.0, -3.0 - SCORE_STEP]
    model, tok, tpl = tiny
    cands = random_examples(1, 4, seed=9)[0].candidates
    rr = Reranker(model, tok, tpl, window=4, stride=2)
    ranked = rr.rerank("fox", cands)
    s = rr.score_windows([("q", "fox", cands)])[0]
    want = monotone_scores(sorted((float(x) for x in s), reverse=True))
    assert [x for _, x in ranked] == want and all(x < 0 for x in want)  # log-probabilities
    assert [d for d, _ in ranked] == [cands[j].docid for j in sorted(range(4), key=lambda j: -float(s[j]))]
    # sliding windows: strictly decreasing with at least the step between neighbours
    many = rr.rerank("fox", random_examples(1, 11, seed=2)[0].candidates)
    sc = [x for _, x in many]
    assert all(a - b >= SCORE_STEP - 1e-9 for a, b in zip(sc, sc[1:]))
