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


def test_cache_num_proc_2_equals_uncached(tiny_model_dir, tiny_data, tmp_path):
    """The tokenised cache built by 2 worker processes holds exactly the rows of the in-memory path."""
    import torch

    from lrt.train.data import prepare_data
    from lrt.train.dist import DistEnv
    from lrt.objective.objective import Objective

    raw = {"model": {"name_or_path": tiny_model_dir}, "data": {"train": str(tiny_data / "train.jsonl"), "max_length": 512},
           "prompt": {"preset": "compact"}, "output_dir": str(tmp_path)}
    env = DistEnv(rank=0, world=1, local_rank=0, device=torch.device("cpu"))
    cached = recipe_from_dict(raw, ["data.num_proc=2"])
    plain = recipe_from_dict(raw, ["data.cache=false"])
    a = prepare_data(cached, env, Objective.from_recipe(cached)).rows
    b = prepare_data(plain, env, Objective.from_recipe(plain)).rows
    assert len(a) == len(b) == 24
    assert [{k: v for k, v in a[i].items() if k != "length"} for i in range(24)] == b
    assert list(a.lengths) == [len(r["input_ids"]) for r in b]
