"""The `rank_llm` presets are rank_llm's FIRST / RankZephyr prompts byte for byte.

Checked against the installed `rank-llm` 0.25 package (a test dependency, installed with --no-deps:
its vLLM dependency is not needed): the template YAML text itself, and the chat messages its own
`SingleTurnListwiseInferenceHandler.generate_prompt` builds for a window, loaded from the package
source without importing rank_llm's vLLM-bound package `__init__`s.
"""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest
import yaml

from lrt.cli import main
from lrt.config import load_recipe
from lrt.data.prompts import PRESETS, PromptTemplate, escape_passage, identifier_labels, render_messages
from lrt.train.data import prompt_template

SPEC = importlib.util.find_spec("rank_llm")  # finding it does not execute the package
pytestmark = pytest.mark.skipif(SPEC is None, reason="pip install --no-deps 'rank-llm>=0.25,<0.26' (test extra)")
RECIPES = Path(__file__).resolve().parents[1] / "lrt" / "resources" / "recipes"
TEMPLATES = {"rank_llm": "rank_zephyr_alpha_template.yaml", "rank_llm_numeric": "rank_zephyr_template.yaml"}


def rank_llm_root() -> Path:
    return Path(SPEC.submodule_search_locations[0])


@pytest.fixture(scope="module")
def handler_cls():
    """rank_llm's own prompt builder (its package __init__s import vLLM: bypass them, not the code)."""
    pytest.importorskip("ftfy")
    pytest.importorskip("dacite")
    root = rank_llm_root()
    saved = {k: sys.modules.get(k) for k in ("rank_llm", "rank_llm.rerank", "rank_llm.rerank.listwise")}
    for name, sub in (("rank_llm", ""), ("rank_llm.rerank", "rerank"), ("rank_llm.rerank.listwise", "rerank/listwise")):
        m = types.ModuleType(name)
        m.__path__ = [str(root / sub)]
        sys.modules[name] = m
    from rank_llm.data import Candidate as RCandidate, Query, Result
    from rank_llm.rerank.listwise.singleturn_listwise_inference_handler import SingleTurnListwiseInferenceHandler

    yield SingleTurnListwiseInferenceHandler, Result, Query, RCandidate
    for k, v in saved.items():  # leave sys.modules as found
        if v is None:
            sys.modules.pop(k, None)
        else:
            sys.modules[k] = v


@pytest.mark.parametrize("preset", list(TEMPLATES))
def test_preset_is_the_template_text_of_the_package(preset):
    t = yaml.safe_load((rank_llm_root() / "rerank" / "prompt_templates" / TEMPLATES[preset]).read_text())
    p = PromptTemplate.preset(preset)
    assert p.system == t["system_message"]
    assert p.prefix == t["prefix"]
    assert p.suffix == t["suffix"]
    assert p.passage == t["body"].replace("{rank}", "{id}").replace("{candidate}", "{text}")
    # the differences the issue found in the old first_alpha preset are gone
    assert "an alphabetical" in PromptTemplate.preset("rank_llm").prefix and not p.system.endswith(".")
    assert "Answer concisely and directly" in p.suffix and not p.suffix.endswith("\n")


@pytest.mark.parametrize("preset,n", [("rank_llm", 20), ("rank_llm", 3), ("rank_llm_numeric", 20)])
def test_messages_equal_rank_llm_generate_prompt(handler_cls, preset, n):
    Handler, Result, Query, RCand = handler_cls
    t = yaml.safe_load((rank_llm_root() / "rerank" / "prompt_templates" / TEMPLATES[preset]).read_text())
    query = "how do [2] lobsters breathe"  # rank_llm rewrites [2] -> (2) in queries and passages
    texts = [f"Lobster {i} breathes [{i}] through gills [B] near 1984 water" for i in range(n)]
    result = Result(query=Query(text=query, qid="1"),
                    candidates=[RCand(docid=str(i), score=1.0, doc={"text": x}) for i, x in enumerate(texts)])
    theirs = Handler(t).generate_prompt(result, rank_start=0, rank_end=n, max_length=300,
                                        use_alpha=preset == "rank_llm")
    tpl = PromptTemplate.preset(preset)
    labels = identifier_labels(tpl.identifiers, n)
    ours = render_messages(tpl, query, [escape_passage(x, tpl.escape) for x in texts], labels)
    assert ours == theirs


def test_first_recipes_use_it_and_the_export_says_how(tiny_model_dir, tiny_data, tmp_path):
    for name in ("first-zephyr-7b", "first-mistral-7b", "first-mistral-7b-lora", "first-mistral-7b-qlora",
                 "first-mistral-7b-listmle"):
        tpl = prompt_template(load_recipe(RECIPES / f"{name}.yaml", check_files=False))
        assert all(getattr(tpl, k) == v for k, v in PRESETS["rank_llm"].items()), name
        assert not tpl.system_in_user, name  # rank_llm sends the system message as such
    # an lrt export of a rank_llm-preset run records how rank_llm serves it, and the BOS it trained with
    import json

    run = tmp_path / "run"
    recipe = {"model": {"name_or_path": tiny_model_dir},
              "data": {"train": str(tiny_data / "train.jsonl"), "max_length": 1024},
              "prompt": {"preset": "rank_llm", "max_passage_tokens": 16},
              "train": {"max_steps": 1, "per_device_batch_size": 2}, "log": {"progress": False},
              "output_dir": str(run)}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    rc = main(["train", str(tmp_path / "r.yaml")])
    assert rc == 0
    meta = json.loads((run / "final" / "lrt_reranker.json").read_text())
    assert meta["rank_llm"].startswith("rank_llm (0.25) RankListwiseOSLLM(") and "use_alpha=True" in meta["rank_llm"]
    assert meta["bos"] == "none" and meta["template"]["bos"] == "never"  # chatml tiny tokenizer: no BOS
    assert meta["template"]["escape"] == "rank_llm"


def test_queries_are_escaped_like_passages():
    tpl = PromptTemplate.preset("first_alpha")
    msgs = render_messages(tpl, "what is [A] and [12] or <id_3>", ["p"], ["A"])
    assert "what is (A) and (12) or (id 3)" in msgs[-1]["content"]
    assert "[A] p" in msgs[-1]["content"]  # the identifier itself is untouched
    # rank_llm style rewrites numbers only, in queries as in passages (its `_replace_number`)
    msgs = render_messages(PromptTemplate.preset("rank_llm"), "what is [A] and [12]", ["p [B] [7]"], ["A"])
    assert "what is [A] and (12)" in msgs[-1]["content"]
