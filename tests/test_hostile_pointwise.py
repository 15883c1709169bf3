"""Pointwise recipes and exports as a hostile user drives them (issue 28), through the real CLI as a
subprocess: `prompt.prefix`, `prompt.suffix` and `prompt.bos` are honoured in training, in
`final/lrt_reranker.json` and in `lrt rerank` (scores equal a plain HF forward of the recorded
encoding); `prompt.system`, `prompt.passage` and template fields in a literal prefix are refused
with one error naming the key; truncated weights are named by `lrt export` and `--to-seq-cls`."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from test_hostile_export import assert_refused, lrt, snapshot
from test_rerank_cli import write_inputs

PREFIX = "Judge the pair.\n"
SUFFIX = "\nRelevant:"


def _bos_model(out: Path) -> str:
    """A tiny pointwise LM whose tokenizer has a BOS token (`<s>`), with `yes` and `no` one token each."""
    from lrt.testing.tiny import build_tokenizer, tiny_llama

    tok = build_tokenizer("zephyr")
    tok.add_tokens(["yes"])
    model = tiny_llama(len(tok), seed=4, tie=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                       bos_token_id=tok.bos_token_id)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def recipe(tiny_data, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("hp")
    p = d / "recipe.yaml"
    p.write_text(yaml.safe_dump({
        "model": {"name_or_path": _bos_model(d / "model")},
        "data": {"train": str(tiny_data / "train.jsonl"), "max_length": 256, "padding_side": "left"},
        "prompt": {"preset": "compact_pointwise", "max_passage_tokens": 24},
        "scoring": {"mode": "pointwise", "negatives": 2},
        "loss": [{"name": "softmax_ce"}],
        "train": {"max_steps": 2, "per_device_batch_size": 1, "grad_accum": 1, "lr": 1e-3, "log_every": 1,
                  "save_every": 1},
        "eval": {"at_start": False, "at_end": False},
        "log": {"progress": False},
        "output_dir": str(d / "unused"),
    }))
    return p


@pytest.fixture(scope="module")
def run(recipe, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hp-run") / "run"
    p = lrt("train", recipe, f"output_dir={out}", f"prompt.prefix={json.dumps(PREFIX)}",
            f"prompt.suffix={json.dumps(SUFFIX)}", "prompt.bos=always")
    assert p.returncode == 0, p.stderr[-3000:]
    return out


@pytest.mark.workflow  # the module's run: a whole `lrt train` + export (~12 s)
def test_prefix_suffix_and_bos_are_honoured_and_recorded(run, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = run / "final"
    meta = json.loads((final / "lrt_reranker.json").read_text())
    t = meta["template"]
    assert (t["prefix"], t["suffix"], t["bos"], meta["bos"]) == (PREFIX, SUFFIX, True, "prepended")
    # lrt rerank scores the recorded encoding: [BOS] + prefix + body + suffix, the logit difference at its end
    files = write_inputs(tmp_path)
    p = lrt("rerank", "--model", final, *[x for k in ("run", "queries", "corpus", "out") for x in (f"--{k}", files[k])],
            "--device", "cpu")
    assert p.returncode == 0, p.stderr[-2000:]
    q1 = [(r[2], float(r[4])) for r in (x.split() for x in Path(files["out"]).read_text().splitlines()) if r[0] == "q1"]
    tok = AutoTokenizer.from_pretrained(final)
    lm = AutoModelForCausalLM.from_pretrained(final).eval()
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    doc = q1[0][0]
    ids = [tok.bos_token_id] + enc(PREFIX) + enc(t["body"].format(instruction=t["instruction"], query="quick fox",
                                                                   doc=f"the {doc} passage text about a fox")) + enc(SUFFIX)
    with torch.no_grad():
        logits = lm(input_ids=torch.tensor([ids])).logits[0, -1]
    want = float(logits[tok.convert_tokens_to_ids("yes")] - logits[tok.convert_tokens_to_ids("no")])
    assert q1[0][1] == pytest.approx(want, abs=1e-4)
    # the sequence classifier's chat template renders the BOS and the recipe's prefix too
    p = lrt("export", final, "--to-seq-cls", "--out", tmp_path / "seq")
    assert p.returncode == 0, p.stderr[-2000:]
    tpl = (tmp_path / "seq" / "chat_template.jinja").read_text()
    assert "bos_token" in tpl and json.dumps(PREFIX) in tpl


# (case, override, needle)
REFUSED = [
    ("prompt.system", "prompt.system=You judge relevance.", "prompt.system: a pointwise pair template has no separate"),
    ("prompt.passage", "prompt.passage=[{id}] {text}", "prompt.passage: a pointwise pair holds one passage"),
    ("a {query} field in prompt.prefix", 'prompt.prefix="Query {query}:"', "prompt.prefix: a pointwise prefix is literal"),
    ("a {doc} field in prompt.suffix", 'prompt.suffix="Doc {doc}"', "prompt.suffix: a pointwise suffix is literal"),
]


@pytest.mark.parametrize("case,override,needle", REFUSED, ids=[r[0] for r in REFUSED])
@pytest.mark.parametrize("cmd", ["validate", "train"])
def test_fields_pointwise_cannot_use_are_refused(case, override, needle, cmd, recipe, tmp_path):
    out = tmp_path / "run"
    p = lrt(cmd, recipe, override, f"output_dir={out}")
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert needle in p.stderr, p.stderr[-2000:]
    assert not out.exists()


def test_bos_always_without_a_bos_token_is_one_error(recipe, tmp_path):
    from test_pointwise import save_pointwise_model

    model = save_pointwise_model(tmp_path / "chatml")  # the chatml tokenizer has no BOS
    p = lrt("train", recipe, f"model.name_or_path={model}", "prompt.bos=always", f"output_dir={tmp_path / 'run'}")
    assert_refused(p, "prompt.bos=always, but the tokenizer has no BOS token")


@pytest.mark.workflow
@pytest.mark.parametrize("how", ["truncate", "garbage"])
def test_truncated_pointwise_weights_are_named(how, run, tmp_path):
    final = tmp_path / "final"
    shutil.copytree(run / "final", final)
    w = final / "model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2] if how == "truncate" else b"\xff" * 64)
    before = snapshot(final)
    assert_refused(lrt("export", final, "--to-seq-cls", "--out", tmp_path / "seq"), str(w), "truncated or corrupt")
    assert not (tmp_path / "seq").exists() and snapshot(final) == before
    # the run's own checkpoint, truncated: refused by the manifest check, naming the file
    r = tmp_path / "run"
    shutil.copytree(run, r)
    for cp in (r / "checkpoints").glob("step-*"):
        f = cp / "trainable.safetensors"
        f.write_bytes(f.read_bytes()[:100])
    assert_refused(lrt("export", r, "--out", tmp_path / "x"), "trainable.safetensors has 100 bytes")
    assert not (tmp_path / "x").exists()


@pytest.mark.workflow
def test_seq_cls_into_its_source_is_refused(run, tmp_path):
    final = tmp_path / "final"
    shutil.copytree(run / "final", final)
    before = snapshot(final)
    for out in (final, final / "seq", tmp_path):
        assert_refused(lrt("export", final, "--to-seq-cls", "--out", out), "the source")
    assert snapshot(final) == before
    # into a directory holding a full export: refused, it would mix
    shutil.copytree(run / "final", tmp_path / "other")
    assert_refused(lrt("export", final, "--to-seq-cls", "--out", tmp_path / "other"), "already holds a full export")
