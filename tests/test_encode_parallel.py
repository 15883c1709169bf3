"""Tokenisation with `datasets` worker processes gives exactly the rows of the 1-process path."""
from __future__ import annotations

from lrt.config import recipe_from_dict
from lrt.data.collate import identifier_token_ids
from lrt.modeling import load_tokenizer
from lrt.testing.tiny import random_examples
from lrt.train.data import encode_all, prompt_template


def test_num_proc_2_equals_1(tiny_model_dir, tiny_data, tmp_path):
    raw = {"model": {"name_or_path": tiny_model_dir}, "data": {"train": str(tiny_data / "train.jsonl"), "max_length": 512},
           "prompt": {"preset": "compact"}, "output_dir": str(tmp_path)}
    r1 = recipe_from_dict(raw, [])
    r2 = recipe_from_dict(raw, ["data.num_proc=2"])
    tok = load_tokenizer(r1)
    tpl = prompt_template(r1)
    ids = identifier_token_ids(tok, tpl, 5)
    exs = random_examples(12, 5, seed=3)
    a = encode_all(r1, tok, tpl, exs, ids, True)
    b = encode_all(r2, tok, tpl, exs, ids, True)
    assert a == b and len(a) == 12
