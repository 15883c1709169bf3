"""Answer positions, identifier ids, LM labels and ranks on three chat-template styles, both
padding sides: the FIRST anchor's Zephyr bug (pad == eos, eos inside the template) must not happen."""
from __future__ import annotations

import pytest
import torch

from lrt.data.collate import IdentifierError, ListwiseCollator, encode_example, identifier_token_ids
from lrt.data.prompts import PromptTemplate, render_target
from lrt.data.schema import Candidate, ListwiseExample

STYLES = {
    "chatml": PromptTemplate.preset("first_alpha"),
    "zephyr": PromptTemplate.preset("first_alpha"),
    "mistral": PromptTemplate.preset("first_alpha", system_in_user=True),
}


def example(n: int = 5) -> ListwiseExample:
    cands = [Candidate(f"d{i}", f"passage number {i} about the quick brown fox [B] and [12]") for i in range(n)]
    ranking = ["d3", "d0", "d4", "d1", "d2"][:n] if n == 5 else [f"d{i}" for i in reversed(range(n))]
    return ListwiseExample("q1", "brown fox", cands, ranking, [1.0, 0.0, 0.0, 3.0, 2.0][:n] if n == 5 else None)


@pytest.mark.parametrize("style", list(STYLES))
@pytest.mark.parametrize("side", ["left", "right"])
def test_answer_position_and_identifiers(tokenizers, style, side):
    tok, tpl = tokenizers[style], STYLES[style]
    ex = example()
    ids = identifier_token_ids(tok, tpl, 5)
    assert [tok.convert_ids_to_tokens(i) for i in ids] == list("ABCDE")
    short = ListwiseExample("q2", "fox", ex.candidates[:3], ["d2", "d0", "d1"])
    encs = [encode_example(tok, tpl, e, max_length=4096, id_token_ids=ids) for e in (ex, short)]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    batch = ListwiseCollator(pad, side)(encs)
    for b, (e, enc) in enumerate(zip((ex, short), encs)):
        p = int(batch["answer_pos"][b])
        row = batch["input_ids"][b]
        # the answer position holds the "[" that starts the target; the next token is the best id
        assert tok.decode([int(row[p])]).strip() == "["
        best = e.ranking[0]
        best_idx = [c.docid for c in e.candidates].index(best)
        assert int(row[p + 1]) == ids[best_idx]
        assert batch["attention_mask"][b, p] == 1 and batch["attention_mask"][b, p + 1] == 1
        # integer teacher ranks in display order (never logits)
        n = len(e.candidates)
        assert batch["ranks"][b, :n].tolist() == e.ranks()
        assert batch["cand_ids"][b, :n].tolist() == ids[:n]
    # LM labels: exactly the target tokens "[C] > [A] > ...<eos>", nothing from the prompt
    T = batch["input_ids"].shape[1]
    m0 = (batch["lm_flat_pos"] // T) == 0
    tgt = tok.decode(batch["lm_targets"][m0].tolist())
    labels = [chr(65 + [c.docid for c in ex.candidates].index(d)) for d in ex.ranking]
    assert tgt == render_target(labels)[0] + tok.eos_token
    # positions predict the next token
    flat = batch["input_ids"].reshape(-1)
    assert torch.equal(flat[batch["lm_flat_pos"] + 1], batch["lm_targets"])


def test_zephyr_pad_equals_eos_and_template_has_eos(tokenizers):
    tok = tokenizers["zephyr"]
    assert tok.pad_token_id == tok.eos_token_id
    ids = identifier_token_ids(tok, STYLES["zephyr"], 5)
    enc = encode_example(tok, STYLES["zephyr"], example(), max_length=4096, id_token_ids=ids)
    # eos appears inside the prompt (after each turn): counting non-pad tokens would be wrong
    n_eos_in_prompt = enc.input_ids[: enc.target_start].count(tok.eos_token_id)
    assert n_eos_in_prompt >= 2
    naive = sum(1 for t in enc.input_ids[: enc.target_start] if t != tok.pad_token_id)
    assert naive != enc.target_start  # the anchor's source_len would be off by the eos count
    assert enc.answer_index == enc.target_start + 1


def test_inference_prefix_matches_training_tokens(tokenizers):
    tok, tpl = tokenizers["chatml"], STYLES["chatml"]
    ids = identifier_token_ids(tok, tpl, 5)
    full = encode_example(tok, tpl, example(), max_length=4096, id_token_ids=ids)
    infer = encode_example(tok, tpl, example(), max_length=4096, id_token_ids=ids, include_target=False)
    assert infer.input_ids == full.input_ids[: full.answer_index]
    assert infer.answer_index == full.answer_index


def test_multi_token_identifier_fails_clearly(tokenizers):
    # Llama-3/Qwen style pre-tokenizers glue "[" to the letter: first-token scoring would be wrong.
    tok = tokenizers["llama3"]
    with pytest.raises(IdentifierError, match="single token"):
        identifier_token_ids(tok, PromptTemplate.preset("first_alpha"), 5)


def test_numeric_multi_digit_ids_are_rejected_for_scoring_but_ok_for_lm(tokenizers):
    tok = tokenizers["chatml"]
    tpl = PromptTemplate.preset("rankgpt_numeric")
    with pytest.raises(IdentifierError, match="not a single token"):
        identifier_token_ids(tok, tpl, 150)  # "[137]" etc. are several BPE pieces
    ex = example(150)
    enc = encode_example(tok, tpl, ex, max_length=100000, id_token_ids=None)
    assert enc.cand_token_ids == []
    assert max(enc.token_ranks) == 150  # importance weights can still map tokens to output ranks


def test_passages_truncated_and_escaped_template_kept(tokenizers):
    tok, tpl = tokenizers["chatml"], STYLES["chatml"].with_(max_passage_tokens=4)
    ids = identifier_token_ids(tok, tpl, 5)
    enc = encode_example(tok, tpl, example(), max_length=4096, id_token_ids=ids)
    text = tok.decode(enc.input_ids)
    assert "(B)" not in text  # cut before the bracket by the 4-token budget
    assert "Search Query: brown fox." in text and "Rank the 5 passages above" in text
    enc2 = encode_example(tok, STYLES["chatml"], example(), max_length=4096, id_token_ids=ids)
    text2 = tok.decode(enc2.input_ids)
    assert "(B)" in text2 and "(12)" in text2 and "[B] and" not in text2


def test_max_length_shrinks_passages_not_template(tokenizers):
    tok, tpl = tokenizers["chatml"], STYLES["chatml"]
    ids = identifier_token_ids(tok, tpl, 5)
    long = example()
    long.candidates = [Candidate(c.docid, c.text * 20) for c in long.candidates]
    full = encode_example(tok, tpl, long, max_length=100000, id_token_ids=ids)
    cap = len(full.input_ids) - 150
    short = encode_example(tok, tpl, long, max_length=cap, id_token_ids=ids)
    assert len(short.input_ids) <= cap
    assert "Rank the 5 passages above" in tok.decode(short.input_ids)


def test_window_reranks_within_window(tokenizers):
    tok, tpl = tokenizers["chatml"], STYLES["chatml"]
    ids = identifier_token_ids(tok, tpl, 3)
    enc = encode_example(tok, tpl, example(), max_length=4096, id_token_ids=ids, window=3)
    # candidates d0,d1,d2 with global ranks 2,4,5 -> window ranks 1,2,3
    assert enc.ranks == [1, 2, 3]


@pytest.mark.parametrize("style", list(STYLES))
def test_reranking_cuts_passages_exactly_as_training(tokenizers, style):
    """When max_length binds, the reranker's prompt + "[" equals training's: passages are fitted to
    prompt + the full target + EOS in both (before, reranking fitted prompt + "[A]" only and kept
    passages ~4 tokens longer)."""
    from lrt.rerank import Reranker
    from lrt.testing.tiny import tiny_llama

    tok, tpl = tokenizers[style], STYLES[style].with_(max_passage_tokens=60)
    cands = [Candidate(f"d{i}", " ".join(["the quick brown fox jumps over the lazy dog"] * 8)) for i in range(5)]
    ex = ListwiseExample("q", "brown fox [2]", cands, [c.docid for c in cands])
    ids = identifier_token_ids(tok, tpl, 5)
    free = encode_example(tok, tpl, ex, max_length=100_000, id_token_ids=ids)
    max_length = len(free.input_ids) - 40  # binds: every passage must shrink
    train = encode_example(tok, tpl, ex, max_length=max_length, id_token_ids=ids)
    assert len(free.input_ids) - 40 >= len(train.input_ids)
    rr = Reranker(tiny_llama(len(tok)), tok, tpl, window=5, stride=5, max_length=max_length)
    enc = rr.encode_window(("q", ex.query, cands))
    assert enc.input_ids == train.input_ids[: train.answer_index]
    assert enc.answer_index == train.answer_index and enc.cand_token_ids == train.cand_token_ids
    assert "brown fox (2)" in tok.decode(enc.input_ids)  # the query escaped as passages are
