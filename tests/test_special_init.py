"""<id_k> rows start from the numeral k's embedding: also when the checkpoint has spare rows
(no resize, as Qwen2.5), and digit-split anagrams (<id_12>, <id_21>) start apart."""
from __future__ import annotations

import torch

from lrt.config import recipe_from_dict
from lrt.modeling import init_special_identifiers, load_tokenizer
from lrt.testing.tiny import tiny_llama


def _tok(tmp_path, tiny_dir, n):
    raw = {"model": {"name_or_path": tiny_dir}, "data": {"train": "x", "window": n},
           "prompt": {"identifiers": "special"}, "output_dir": str(tmp_path)}
    return load_tokenizer(recipe_from_dict(raw, [], check_files=False), n_identifiers=n)


def test_spare_rows_are_initialised_and_anagrams_differ(tiny_model_dir, tmp_path):
    tok = _tok(tmp_path, tiny_model_dir, 21)
    model = tiny_llama(len(tok) + 50, hidden=32, layers=1, heads=2, tie=False)  # spare rows: no resize
    rows_before = model.get_input_embeddings().weight.shape[0]
    init_special_identifiers(model, tok)
    assert model.get_input_embeddings().weight.shape[0] == rows_before
    emb = model.get_input_embeddings().weight
    out = model.get_output_embeddings().weight
    for k in (1, 7, 12, 21):
        tid = tok.convert_tokens_to_ids(f"<id_{k}>")
        src = tok(str(k), add_special_tokens=False)["input_ids"]
        if len(src) == 1:
            assert torch.equal(emb[tid], emb[src[0]]) and torch.equal(out[tid], out[src[0]])
    e12, e21 = (emb[tok.convert_tokens_to_ids(t)] for t in ("<id_12>", "<id_21>"))
    assert not torch.allclose(e12, e21)


def test_resize_when_needed(tiny_model_dir, tmp_path):
    tok = _tok(tmp_path, tiny_model_dir, 5)
    model = tiny_llama(len(tok) - 5, hidden=32, layers=1, heads=2)
    init_special_identifiers(model, tok)
    assert model.get_input_embeddings().weight.shape[0] == len(tok)
