"""The shipped recipes' prompts on the REAL Mistral tokenizers, built offline from the SentencePiece
files that `mistral-common` ships (a test dependency):

- `tokenizer.model.v1`: Mistral-7B-v0.1 / zephyr-7b-beta (adds BOS; zephyr's chat template has none);
- `mistral_instruct_tokenizer_240323.model.v3`: Mistral-7B-Instruct-v0.3 (its template writes `<s>`).

Checked on both: BOS once and exactly where `tokenizer(text)` / vLLM put it, identifiers one token,
the answer position, the LM targets, reranking's prompt equal to training's, and fullrank's numeric
identifiers 1..100 (several tokens each) with fullrank's importance weight per output rank.
"""
from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import pytest
import torch

from lrt.config import LossTerm, load_recipe
from lrt.data.collate import ListwiseCollator, encode_example, identifier_token_ids
from lrt.data.prompts import (PromptTemplate, bos_outcome, encode_prompt, identifier_labels, render_prompt,
                              render_target)
from lrt.data.schema import Candidate, ListwiseExample
from lrt.train.data import prompt_template
from lrt.objective.objective import Objective

mistral_common = pytest.importorskip("mistral_common")
pytest.importorskip("sentencepiece")

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "lrt" / "resources" / "recipes"
SPM = Path(mistral_common.__file__).parent / "data"

# HuggingFaceH4/zephyr-7b-beta's chat template (tokenizer_config.json): no BOS, EOS after each turn.
ZEPHYR_TEMPLATE = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + "
    "eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)
# The shape of Mistral-7B-Instruct-v0.3's template: BOS written by the template, [INST] ... [/INST],
# a system message folded into the last user turn with a blank line.
MISTRAL_V3_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] %}"
    "{%- set loop_messages = messages[1:] %}{%- else %}{%- set loop_messages = messages %}{%- endif %}"
    "{{- bos_token }}{%- for message in loop_messages %}{%- if message['role'] == 'user' %}"
    "{%- if loop.last and system_message is defined %}{{- '[INST] ' + system_message + '\n\n' + message['content'] + '[/INST]' }}"
    "{%- else %}{{- '[INST] ' + message['content'] + '[/INST]' }}{%- endif %}"
    "{%- else %}{{- ' ' + message['content'] + eos_token }}{%- endif %}{%- endfor %}"
)
TOKENIZERS = {"zephyr": ("tokenizer.model.v1", ZEPHYR_TEMPLATE, "first-zephyr-7b.yaml"),
              "mistral_v3": ("mistral_instruct_tokenizer_240323.model.v3", MISTRAL_V3_TEMPLATE, "first-mistral-7b.yaml")}


@pytest.fixture(scope="module")
def real_tok(tmp_path_factory):
    """HF fast tokenizers converted from the real SentencePiece models (add_bos_token as the hub configs)."""
    from transformers import LlamaTokenizerFast

    out = {}
    for name, (spm, template, _) in TOKENIZERS.items():
        d = tmp_path_factory.mktemp(name)
        shutil.copy(SPM / spm, d / "tokenizer.model")
        tok = LlamaTokenizerFast.from_pretrained(str(d), add_bos_token=True, add_eos_token=False)
        tok.chat_template = template
        tok.pad_token = tok.eos_token  # zephyr: pad == eos (the FIRST anchor's trap)
        out[name] = tok
    return out


def recipe_template(recipe: str) -> PromptTemplate:
    return prompt_template(load_recipe(RECIPES / recipe, check_files=False))


def example(n: int, seed: int = 0) -> ListwiseExample:
    """n candidates with text that tempts the tokenizer: brackets, digits, a title, a long passage."""
    g = torch.Generator().manual_seed(seed)
    words = "the lobster [3] breathes through gills 1984 water flow <id_2> cell bank [B] protein".split()
    cands = [Candidate(f"d{i}", " ".join(words[int(j)] for j in torch.randint(len(words), (8 + i % 40,), generator=g)),
                       title="Title" if i == 1 else None) for i in range(n)]
    order = torch.randperm(n, generator=g).tolist()
    return ListwiseExample("q1", "how do lobsters [2] breathe", cands, [f"d{i}" for i in order])


@pytest.mark.parametrize("name", list(TOKENIZERS))
def test_bos_once_and_as_served(real_tok, name):
    tok = real_tok[name]
    tpl = recipe_template(TOKENIZERS[name][2])
    text = render_prompt(tok, tpl, "how do lobsters breathe", ["Lobsters have gills.", "A lobster roll."])
    ids = encode_prompt(tok, tpl, text)["input_ids"]
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1  # never twice
    if name == "zephyr":  # tokenizer adds BOS, template has none: lrt adds it, as tokenizer(text) / vLLM do
        assert not text.startswith("<s>") and bos_outcome(tok, tpl) == "prepended"
        assert ids == tok(text)["input_ids"]
        # the naive way (BOS as text) tokenizes the next token differently: "<" instead of "▁<"
        assert tok(tok.bos_token + text, add_special_tokens=False)["input_ids"] != ids
        off = encode_prompt(tok, tpl.with_(bos="never"), text)["input_ids"]
        assert off == ids[1:]
    else:  # the template writes <s>: nothing added (vLLM, tokenizing with special tokens, would double it)
        assert text.startswith("<s>[INST]") and bos_outcome(tok, tpl) == "template"
        assert ids == tok(text, add_special_tokens=False)["input_ids"]
        assert tok(text)["input_ids"][:2] == [tok.bos_token_id] * 2


# the other FIRST recipes (listmle, lora, qlora) render first-mistral-7b's prompt (checked below)
FIRST_RECIPES = ["first-zephyr-7b.yaml", "first-mistral-7b.yaml", "first-full100-qwen-7b.yaml"]


def test_the_other_first_recipes_share_a_checked_prompt():
    for name in ("first-mistral-7b-listmle.yaml", "first-mistral-7b-lora.yaml", "first-mistral-7b-qlora.yaml"):
        assert recipe_template(name) == recipe_template("first-mistral-7b.yaml"), name


@pytest.mark.parametrize("recipe", FIRST_RECIPES)
@pytest.mark.parametrize("name", list(TOKENIZERS))
def test_first_recipe_prompt_on_real_tokenizer(real_tok, name, recipe):
    tok = real_tok[name]
    tpl = recipe_template(recipe)
    ex = example(20)
    if tpl.identifiers == "special":  # <id_1>..<id_N> are added to the vocabulary (lrt.modeling.load_tokenizer)
        import copy

        from lrt.data.prompts import special_tokens

        tok = copy.deepcopy(tok)
        tok.add_special_tokens({"additional_special_tokens": special_tokens(20)}, replace_extra_special_tokens=False)
    ids20 = identifier_token_ids(tok, tpl, 20)
    assert tok.convert_ids_to_tokens(ids20) == identifier_labels(tpl.identifiers, 20)  # "A".."T" / <id_k>: one token each
    enc = encode_example(tok, tpl, ex, max_length=4096, id_token_ids=ids20)
    ranks = ex.ranks()
    best = ranks.index(1)
    # answer position: the token after it is the best candidate's identifier; it is the target's "["
    assert enc.input_ids[enc.answer_index] == ids20[best]
    assert tok.convert_ids_to_tokens(enc.input_ids[enc.answer_index - 1]) == "["
    assert enc.target_start == enc.answer_index - 1
    # LM targets: exactly "[X] > [Y] > ... </s>" in teacher order, predicted from the position before each
    batch = ListwiseCollator(tok.pad_token_id, "left")([enc])
    labels = identifier_labels(tpl.identifiers, 20)
    target, _ = render_target([labels[i] for i in sorted(range(20), key=lambda i: ranks[i])])
    assert tok.decode(batch["lm_targets"].tolist()) == target + tok.eos_token
    T = batch["input_ids"].shape[1]
    assert batch["lm_flat_pos"].tolist() == list(range(enc.target_start - 1 + T - len(enc.input_ids), T - 1))
    assert int(batch["answer_pos"][0]) == T - len(enc.input_ids) + enc.answer_index - 1
    # reranking encodes exactly training's prompt + "[" (same BOS, same passage cut)
    rr = encode_example(tok, tpl, ex, max_length=4096, id_token_ids=ids20, include_target=False)
    assert rr.input_ids == enc.input_ids[: enc.answer_index]
    # query and passages escaped alike ([2] -> (2) in both; lrt's own style also [B] and <id_2>)
    prompt = tok.decode(rr.input_ids)
    assert "lobsters (2) breathe" in prompt and "(3)" in prompt
    assert re.search(r"\[\d", prompt) is None  # no "[2]"/"[3]" left: the identifiers are letters or <id_k>
    passage_lines = [x for x in prompt.split("\n") if re.match(r"\[(?:[A-T]|<id_\d+>)\] ", x)]
    assert len(passage_lines) == 20
    # rank_llm leaves a letter in brackets alone (as rank_llm does); lrt's own style rewrites it
    assert any("[B]" in x.split("] ", 1)[1] for x in passage_lines) == (tpl.escape == "rank_llm")


@pytest.mark.parametrize("name", list(TOKENIZERS))
def test_fullrank_numeric_identifiers_and_importance_weights(real_tok, name):
    tok = real_tok[name]
    r = load_recipe(RECIPES / "fullrank-mistral-7b.yaml", check_files=False)
    tpl = prompt_template(r)
    ex = example(100, seed=1)
    with pytest.raises(Exception, match="not a single token"):  # "[12]" is 4 tokens: no first-token scoring
        identifier_token_ids(tok, tpl, 100)
    enc = encode_example(tok, tpl, ex, max_length=r.data.max_length, id_token_ids=None)
    batch = ListwiseCollator(tok.pad_token_id, "right")([enc])
    obj = Objective([t for t in r.loss])
    alpha = float(r.loss[0].params.get("alpha", 1.0))
    w = obj.token_weights(batch).tolist()
    pieces = tok.convert_ids_to_tokens(batch["lm_targets"].tolist())
    token_rank = batch["lm_token_ranks"].tolist()
    order = sorted(range(100), key=lambda i: ex.ranks()[i])
    by_rank: dict[int, str] = {}
    for p, rk, wt in zip(pieces, token_rank, w):
        if rk:
            by_rank[rk] = by_rank.get(rk, "") + p
            assert math.isclose(wt, 1 + 1 / math.log2(rk + 1), rel_tol=1e-6), (p, rk, wt)
        else:  # " >" separators and EOS
            assert p in ("▁>", tok.eos_token) and wt == alpha, (p, wt)
    assert len(by_rank) == 100
    for rk, text in by_rank.items():  # every token of "[k]" (incl. its "▁[") carries that output rank
        assert text.lstrip("▁") == f"[{order[rk - 1] + 1}]", (rk, text)
    assert by_rank[next(k for k in by_rank if order[k - 1] + 1 >= 10)].count("]") == 1
    assert sum(1 for p in pieces if p.isdigit()) == sum(len(str(k)) for k in range(1, 101))  # digits split
    assert any(isinstance(t, LossTerm) for t in r.loss)


def test_export_records_bos_and_the_reranker_honours_it(real_tok, tmp_path):
    import json

    from lrt.rerank import META_FILE, Reranker, RerankerMeta
    from lrt.testing.tiny import tiny_llama

    tok = real_tok["zephyr"]
    tpl = recipe_template("first-zephyr-7b.yaml")
    meta = RerankerMeta(template=tpl.to_dict(), window=20, stride=10, max_length=4096, bos=bos_outcome(tok, tpl))
    meta.save(tmp_path)
    assert json.loads((tmp_path / META_FILE).read_text())["bos"] == "prepended"
    loaded = PromptTemplate.from_dict(RerankerMeta.load(tmp_path).template)
    assert loaded.bos == "always"
    ex = example(5)
    model = tiny_llama(64, hidden=16, layers=1)  # encode_window does not run the model (a 32k-vocab init is slow)
    rr = Reranker(model, tok, loaded, window=5, stride=5, max_length=4096)
    enc = rr.encode_window(("q", ex.query, ex.candidates))
    assert enc.input_ids[0] == tok.bos_token_id and enc.input_ids.count(tok.bos_token_id) == 1
    # an export without BOS (bos "none") is reranked without one, whatever the tokenizer would add
    off = RerankerMeta(template=tpl.to_dict(), window=20, stride=10, max_length=4096, bos="none")
    rr = Reranker(model, tok, PromptTemplate.from_dict(off.template),
                  window=5, stride=5, max_length=4096)
    assert rr.encode_window(("q", ex.query, ex.candidates)).input_ids[0] != tok.bos_token_id
