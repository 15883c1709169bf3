"""Pointwise yes/no scoring (Qwen3-Reranker style): template, encoding, scores vs a plain HF forward,
the BCE loss and group losses vs brute force."""
from __future__ import annotations

import math

import pytest
import torch

from lrt.data.pointwise import (PointwiseCollator, PointwiseTemplate, encode_group, encode_pair, pad_pairs, pair_text,
                                sample_group, yes_no_ids)
from lrt.scoring import group_scores, pointwise_scores
from lrt.testing.tiny import build_tokenizer, random_examples, tiny_llama


def pointwise_tokenizer():
    """The tiny chatml tokenizer with `yes` as one token (`no` already is one)."""
    tok = build_tokenizer("chatml")
    tok.add_tokens(["yes"])
    return tok


def save_pointwise_model(out_dir, seed: int = 0) -> str:
    tok = pointwise_tokenizer()
    model = tiny_llama(len(tok), seed=seed, tie=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return str(out_dir)


def test_qwen3_template_is_the_published_one():
    t = PointwiseTemplate.preset("qwen3_reranker")
    text = pair_text(t, "What is the capital of China?", "The capital of China is Beijing.")
    assert text == (
        '<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct '
        'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
        "<Instruct>: Given a web search query, retrieve relevant passages that answer the query\n"
        "<Query>: What is the capital of China?\n<Document>: The capital of China is Beijing."
        "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert PointwiseTemplate.from_dict(t.to_dict()) == t


def test_truncation_keeps_the_suffix():
    tok = pointwise_tokenizer()
    t = PointwiseTemplate.preset("qwen3_reranker", max_passage_tokens=10_000)
    suffix = tok(t.suffix, add_special_tokens=False)["input_ids"]
    full = encode_pair(tok, t, "query", "the quick brown fox " * 200, 10_000)
    cut = encode_pair(tok, t, "query", "the quick brown fox " * 200, 120)
    assert len(full) > 120 and len(cut) == 120
    assert cut[-len(suffix):] == suffix and full[-len(suffix):] == suffix
    assert tok.decode(full) == pair_text(t, "query", ("the quick brown fox " * 200))


@pytest.mark.parametrize("side,pair_batch", [("left", None), ("right", 2), ("left", 3)])
def test_scores_equal_a_plain_hf_forward(side, pair_batch):
    tok = pointwise_tokenizer()
    model = tiny_llama(len(tok), seed=1, tie=False).eval()
    t = PointwiseTemplate.preset("qwen3_reranker")
    yes, no = yes_no_ids(tok, t)
    ex = random_examples(1, n_cands=5, seed=3)[0]
    seqs = [encode_pair(tok, t, ex.query, c.text, 512) for c in ex.candidates]
    assert len({len(s) for s in seqs}) > 1  # padding is exercised
    batch = pad_pairs(seqs, tok.pad_token_id, side)
    with torch.no_grad():
        got = pointwise_scores(model, batch, yes, no, pair_batch)
        want = []
        for s in seqs:
            logits = model(input_ids=torch.tensor([s])).logits[0, -1]
            want.append(float(logits[yes] - logits[no]))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, torch.tensor(want), atol=1e-5, rtol=1e-5)


def test_chunked_scores_have_the_same_gradients():
    tok = pointwise_tokenizer()
    model = tiny_llama(len(tok), seed=2, tie=False)
    t = PointwiseTemplate.preset("qwen3_reranker")
    yes, no = yes_no_ids(tok, t)
    ex = random_examples(1, n_cands=5, seed=4)[0]
    batch = pad_pairs([encode_pair(tok, t, ex.query, c.text, 512) for c in ex.candidates], tok.pad_token_id, "left")
    grads = []
    for pb in (None, 2):
        model.zero_grad()
        pointwise_scores(model, batch, yes, no, pb).pow(2).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_multi_token_answer_word_is_refused():
    from lrt.errors import LrtError

    with pytest.raises(LrtError, match="'yes' is 2 tokens"):
        yes_no_ids(build_tokenizer("chatml"), PointwiseTemplate.preset("qwen3_reranker"))
    from transformers import AutoTokenizer

    from lrt.configio import resolve_path

    word_level = AutoTokenizer.from_pretrained(resolve_path("lrt:assets/tiny-backbone"))  # no "maybe" in its vocabulary
    assert len(set(yes_no_ids(word_level, PointwiseTemplate.preset("compact_pointwise")))) == 2  # it has yes/no
    with pytest.raises(LrtError, match="'maybe' is the unknown token"):
        yes_no_ids(word_level, PointwiseTemplate.preset("compact_pointwise", yes="maybe"))


# ---- groups, sampling, losses ------------------------------------------------------------------
def test_sampling_is_top1_plus_k_and_seeded_by_step():
    row = {"ranks": [3, 1, 5, 2, 4, 6], "index": 7}
    a = sample_group(row, 2, seed=0, step=5)
    assert len(a) == 3 and 1 in a and a == sample_group(row, 2, seed=0, step=5)
    draws = {tuple(sample_group(row, 2, seed=0, step=s)) for s in range(20)}
    assert len(draws) > 1 and all(1 in d for d in draws)
    assert sample_group(row, None, 0, 0) == list(range(6)) and sample_group(row, 5, 0, 0) == list(range(6))


def test_collator_layout_and_ranks():
    tok = pointwise_tokenizer()
    t = PointwiseTemplate.preset("qwen3_reranker")
    exs = random_examples(2, n_cands=5, seed=5)
    rows = [encode_group(tok, t, ex, 512, None, i) for i, ex in enumerate(exs)]
    rows[1] = {**rows[1], "pairs": rows[1]["pairs"][:3], "ranks": [3, 1, 2], "relevance": rows[1]["relevance"][:3]}
    b = PointwiseCollator(tok.pad_token_id, "left", negatives=2, seed=0)(rows, step=3)
    assert b["input_ids"].shape[0] == 6 and b["pair_index"].tolist()[1] == [3, 4, 5]
    assert sorted(b["ranks"][0].tolist()) == [1, 2, 3] and b["ranks"][1].tolist() == [3, 1, 2]
    flat = torch.arange(6, dtype=torch.float)
    assert group_scores(flat, b["pair_index"]).tolist() == [[0, 1, 2], [3, 4, 5]]


def _bce_brute(s, ranks, rel):
    total = 0.0
    for b in range(len(s)):
        idx = [i for i in range(len(s[b])) if ranks[b][i] > 0]
        if len(idx) < 2:
            continue
        if rel is not None:
            top = max(rel[b][i] for i in idx)
            tgt = {i: (rel[b][i] / top if top > 0 else 0.0) for i in idx}
        else:
            tgt = {i: 1.0 if ranks[b][i] == 1 else 0.0 for i in idx}
        per = 0.0
        for i in idx:
            p = 1 / (1 + math.exp(-s[b][i]))
            per -= tgt[i] * math.log(p) + (1 - tgt[i]) * math.log(1 - p)
        total += per / len(idx)
    return total


@pytest.mark.parametrize("with_rel", [True, False])
def test_bce_equals_brute_force(with_rel):
    from lrt.losses.registry import get_ranking_loss

    g = torch.Generator().manual_seed(0)
    s = torch.randn(3, 5, generator=g, dtype=torch.float64)
    ranks = torch.tensor([[2, 1, 3, 5, 4], [1, 3, 2, 0, 0], [1, 0, 0, 0, 0]])
    rel = torch.tensor([[1.0, 3.0, 0.0, 0.0, 2.0], [0.0, 0.0, 0.0, -1, -1], [2.0, -1, -1, -1, -1]], dtype=torch.float64)
    loss = get_ranking_loss("bce")(s, ranks, rel if with_rel else None, reduction="sum")
    want = _bce_brute(s.tolist(), ranks.tolist(), rel.tolist() if with_rel else None)
    assert float(loss) == pytest.approx(want, rel=1e-10)


def test_group_losses_over_pointwise_scores_equal_brute_force():
    """Every registered ranking loss on [B, N] groups of pair scores equals that loss applied to each
    list alone (one group at a time), and softmax_ce equals the FlagEmbedding/ms-swift group CE."""
    from lrt.losses.registry import RANKING_LOSSES, get_ranking_loss

    tok = pointwise_tokenizer()
    model = tiny_llama(len(tok), seed=3, tie=False).eval()
    t = PointwiseTemplate.preset("qwen3_reranker")
    yes, no = yes_no_ids(tok, t)
    exs = random_examples(3, n_cands=4, seed=6)
    rows = [encode_group(tok, t, ex, 512, None, i) for i, ex in enumerate(exs)]
    b = PointwiseCollator(tok.pad_token_id, "left")(rows, step=0)
    with torch.no_grad():
        s = group_scores(pointwise_scores(model, b, yes, no), b["pair_index"])
    for name in sorted(set(RANKING_LOSSES) - {"lipo_lambda"}):
        fn = get_ranking_loss(name)
        whole = float(fn(s, b["ranks"], b["relevance"], reduction="sum"))
        alone = sum(float(fn(s[i:i + 1], b["ranks"][i:i + 1], b["relevance"][i:i + 1], reduction="sum"))
                    for i in range(3))
        assert whole == pytest.approx(alone, rel=1e-5, abs=1e-6), name
    ce = sum(-torch.log_softmax(s[i], 0)[int(b["ranks"][i].argmin())] for i in range(3))
    assert float(get_ranking_loss("softmax_ce")(s, b["ranks"], None, reduction="sum")) == pytest.approx(float(ce), rel=1e-5)
