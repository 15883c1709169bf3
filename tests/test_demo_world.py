"""Fast checks for the demo world, its tokenizer and the shipped tiny backbone (< 20 s, offline)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from lrt.data.prompts import PromptTemplate, render_prompt, render_target
from lrt.demo.tokenizer import build_tokenizer
from lrt.demo.world import World, make_split, list_ndcg, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
BACKBONE = ROOT / "lrt" / "assets" / "tiny-backbone"


def test_same_seed_same_rows(tmp_path: Path) -> None:
    a = write_jsonl(make_split(50, 8, seed=3), tmp_path / "a.jsonl").read_bytes()
    b = write_jsonl(make_split(50, 8, seed=3), tmp_path / "b.jsonl").read_bytes()
    assert a == b
    assert make_split(50, 8, seed=4) != make_split(50, 8, seed=3)


def test_rows_are_valid_listwise_examples() -> None:
    rows = make_split(200, 8, seed=1)
    differs = 0
    for r in rows:
        ids = [c["docid"] for c in r["candidates"]]
        assert sorted(r["ranking"]) == sorted(ids) and len(set(ids)) == len(ids) == 8
        assert len(r["relevance"]) == len(ids) and max(r["relevance"]) >= 1
        grade = dict(zip(ids, r["relevance"]))
        # teacher = grades descending; grade = number of query-word occurrences
        assert [grade[d] for d in r["ranking"]] == sorted(r["relevance"], reverse=True)
        q = r["query"].split()
        for c, g in zip(r["candidates"], r["relevance"]):
            assert sum(w in q for w in c["text"].split()) == g
        differs += ids != r["ranking"]
    assert differs > 150  # the first-stage order is imperfect
    init = sum(list_ndcg(r["relevance"]) for r in rows) / len(rows)
    assert 0.7 < init < 0.95


def test_topic_split_depends_on_seed() -> None:
    a, b = World(topic_seed=1), World(topic_seed=1001)
    assert a.lexicon == b.lexicon and a.topics != b.topics


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory):
    from transformers import AutoTokenizer

    d = tmp_path_factory.mktemp("tok")
    build_tokenizer(d)
    return AutoTokenizer.from_pretrained(str(d))  # offline reload from files


def test_identifiers_are_single_tokens(tok) -> None:
    for i in range(26):
        lab = chr(65 + i)
        enc = tok(f"[{lab}]", add_special_tokens=False)["input_ids"]
        assert tok.convert_ids_to_tokens(enc) == ["[", lab, "]"]
    assert tok.eos_token == "<|im_end|>" and tok.pad_token is not None
    assert tok.is_fast


def test_offsets_are_character_spans(tok) -> None:
    r = make_split(1, 5, seed=2)[0]
    prompt = render_prompt(tok, PromptTemplate.preset("compact"), r["query"], [c["text"] for c in r["candidates"]])
    assert prompt.startswith("<|im_start|>user\n") and prompt.endswith("<|im_start|>assistant\n")
    text = prompt + render_target(["C", "A", "B", "E", "D"])[0] + tok.eos_token
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    toks = tok.convert_ids_to_tokens(enc["input_ids"])
    assert "<|unk|>" not in toks
    for t, (a, b) in zip(toks, enc["offset_mapping"]):
        assert text[a:b] == t
    starts = [a for a, _ in enc["offset_mapping"]]
    ans = starts.index(len(prompt) + 1) - 1
    assert toks[ans] == "[" and toks[ans + 1] == "C"


def test_backbone_loads_offline_and_is_small() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert BACKBONE.is_dir(), "run scripts/pretrain_tiny_backbone.py"
    size = sum(p.stat().st_size for p in BACKBONE.rglob("*") if p.is_file())
    assert size <= 20 * 1024 * 1024
    model = AutoModelForCausalLM.from_pretrained(str(BACKBONE))
    tok = AutoTokenizer.from_pretrained(str(BACKBONE))
    assert model.config.tie_word_embeddings and model.config.vocab_size >= len(tok)
    assert json.loads((BACKBONE / "config.json").read_text())["model_type"] == "llama"
    assert (BACKBONE / "README.md").is_file()


def test_vocabulary_split_is_disjoint_and_queries_stay_in_their_half() -> None:
    from lrt.demo.world import vocabulary_split

    pre, quick = vocabulary_split()
    assert not set(pre) & set(quick) and sorted(pre + quick) == sorted(World().lexicon)
    rows = make_split(300, 5, seed=11, query_vocabulary=quick)
    assert all(r["query"] in set(quick) for r in rows)
    assert any(r["query"] in set(pre) for r in make_split(300, 5, seed=11))  # the default draws from all
