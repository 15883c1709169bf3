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


def test_all_identifier_rows_start_distinct_on_digit_splitting_tokenizer(tmp_path):
    """Mistral-style tokenizers split every digit: <id_11> and <id_1> share the pieces "1" and
    must still start apart (else, frozen under LoRA, they stay tied forever); k = 1..100."""
    from lrt.testing.tiny import build_tokenizer

    d = tmp_path / "mistral-tok"
    build_tokenizer("mistral").save_pretrained(d)
    tok = _tok(tmp_path, str(d), 100)
    assert tok("11", add_special_tokens=False)["input_ids"] == tok("1", add_special_tokens=False)["input_ids"] * 2
    ids = tok.convert_tokens_to_ids([f"<id_{k}>" for k in range(1, 101)])
    for dtype in (torch.float32, torch.bfloat16):
        model = tiny_llama(len(tok) - 100, hidden=32, layers=1, heads=2, tie=False).to(dtype)
        init_special_identifiers(model, tok)
        for w in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
            rows = w[ids].float()
            dist = torch.cdist(rows, rows) + torch.eye(100) * 1e9
            scale = rows.norm(dim=1).mean()
            assert dist.min() > 1e-2 * scale, (dtype, dist.min(), dist.argmin())
            one = tok("1", add_special_tokens=False)["input_ids"]
            assert len(one) == 1 and torch.equal(w[ids[0]], w[one[0]])  # <id_1> is exactly "1"
