"""Bad models and loss params through the real CLI: one `error:` naming the key, exit 2, no traceback.

Model directories without (or with a broken) tokenizer, truncated weights, LoRA target modules
the model does not have, `config_overrides` typos and types; every bad loss param of every term
(`lm` included) reported at once; QLoRA on CPU says what it does.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lrt.cli import main

REPO = Path(__file__).resolve().parents[1]
ROWS = [{"qid": str(q), "query": f"query {q}", "candidates": [{"docid": f"d{q}{k}", "text": f"passage {k}"}
                                                             for k in range(3)],
         "ranking": [f"d{q}{k}" for k in (1, 0, 2)]} for q in range(4)]


@pytest.fixture()
def recipe(tmp_path, tiny_model_dir) -> Path:
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    r = {"model": {"name_or_path": str(tiny_model_dir)}, "data": {"train": str(data), "max_length": 256},
         "prompt": {"preset": "compact"}, "train": {"max_steps": 1, "per_device_batch_size": 2, "save_final": False},
         "eval": {"at_start": False, "at_end": False}, "log": {"progress": False}, "output_dir": str(tmp_path / "run")}
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(r))
    return p


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    rc = main(list(argv))
    cap = capsys.readouterr()
    return rc, cap.out + cap.err


def assert_one_error(rc: int, out: str, *needles: str) -> None:
    assert "Traceback" not in out, out[-3000:]
    assert rc == 2, (rc, out[-3000:])
    assert len([ln for ln in out.splitlines() if ln.startswith("error:")]) == 1, out[-3000:]
    for n in needles:
        assert n in out, (n, out[-3000:])


def _variant(src: Path, dst: Path, kind: str) -> Path:
    """A broken copy of the tiny model directory."""
    shutil.copytree(src, dst)
    if kind == "no_tokenizer":
        for f in dst.iterdir():
            if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
                f.unlink()
    elif kind == "corrupt_tokenizer":
        (dst / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    elif kind == "truncated_weights":
        w = dst / "model.safetensors"
        w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    elif kind == "corrupt_config":
        (dst / "config.json").write_text('{"model_type": "llama", ')
    return dst


MODEL_DIRS = [  # (kind, words the message must hold)
    ("no_tokenizer", ["model.name_or_path: cannot load a tokenizer", "tokenizer.json"]),
    ("corrupt_tokenizer", ["model.name_or_path: cannot load a tokenizer"]),
    ("truncated_weights", ["model.name_or_path: the weights in", "truncated or corrupt"]),
    ("corrupt_config", ["model.name_or_path", "config.json"]),
    ("missing", ["model.name_or_path", "is not a directory"]),
]


@pytest.mark.parametrize("kind, needles", MODEL_DIRS, ids=[c[0] for c in MODEL_DIRS])
def test_broken_model_directories(recipe, tiny_model_dir, tmp_path, capsys, kind, needles):
    model = tmp_path / "missing-model" if kind == "missing" else _variant(tiny_model_dir, tmp_path / "m", kind)
    assert_one_error(*run_cli(capsys, "train", str(recipe), f"model.name_or_path={model}"), *needles)


def test_tokenizer_key_is_named_when_set(recipe, tiny_model_dir, tmp_path, capsys):
    tok = _variant(tiny_model_dir, tmp_path / "tok", "no_tokenizer")
    assert_one_error(*run_cli(capsys, "train", str(recipe), f"model.tokenizer={tok}"),
                     "model.tokenizer: cannot load a tokenizer")


MODEL_CASES = [  # (id, overrides, words the message must hold)
    ("lora_unknown_module", ["model.lora={target_modules: [nope_proj]}"],
     ["model.lora.target_modules=['nope_proj']", "q_proj"]),
    ("lora_regex_matches_nothing", ["model.lora={target_modules: 'nothing.*'}"], ["model.lora.target_modules"]),
    ("lora_modules_to_save_unknown", ["model.lora={modules_to_save: [nope_head]}"],
     ["model.lora.modules_to_save: ['nope_head'] match no module", "lm_head"]),
    ("config_overrides_typo_from_config", ["model.init=from_config", "model.config_overrides={num_hiden_layers: 1}"],
     ["model.config_overrides: unknown key(s) num_hiden_layers", "did you mean 'num_hidden_layers'"]),
    ("config_overrides_typo_pretrained", ["model.config_overrides={hidden_sise: 8}"],
     ["model.config_overrides: unknown key(s) hidden_sise"]),
    ("config_overrides_wrong_type_pretrained", ["model.config_overrides={num_hidden_layers: two}"],
     ["model.config_overrides: wrong type for num_hidden_layers='two'"]),
    ("config_overrides_shape_mismatch_pretrained", ["model.config_overrides={hidden_size: 8}"],
     ["model.config_overrides"]),
]


@pytest.mark.parametrize("case, overrides, needles", MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_bad_model_settings_at_build(recipe, capsys, case, overrides, needles):
    assert_one_error(*run_cli(capsys, "train", str(recipe), *overrides), *needles)


LOSS_CASES = [  # (id, loss list, words the ONE message must hold: every problem, not the first)
    ("lm_all_bad", [{"name": "lm", "params": {"normalize": "bogus", "kernel": "nope", "chunk_size": "big",
                                              "alpha": -1, "importance": "yes"}}],
     ["loss[0].params.normalize: normalize='bogus'", "loss[0].params.kernel: kernel='nope'",
      "loss[0].params.chunk_size: chunk_size='big'", "loss[0].params.alpha", "loss[0].params.importance",
      "5 problem(s)"]),
    ("lm_unknown_param", [{"name": "lm", "params": {"chunk": 3}}], ["Did you mean 'chunk_size'", "unknown lm param"]),
    ("lm_chunk_size_zero", [{"name": "lm", "params": {"chunk_size": 0}}], ["loss[0].params.chunk_size"]),
    ("ranknet_two_bad", [{"name": "lm"}, {"name": "ranknet", "params": {"weighting": "frist", "sigma": 0}}],
     ["loss[1].params.weighting", "Did you mean 'first'", "loss[1].params.sigma", "2 problem(s)"]),
    ("ranknet_reduction", [{"name": "ranknet", "params": {"reduction": "mean"}}],
     ["loss[0].params.reduction", "set by the objective"]),
    ("lambdaloss_k_and_scheme", [{"name": "lambdaloss", "params": {"k": 0, "scheme": "ndcg"}}],
     ["loss[0].params.k", "loss[0].params.scheme"]),
    ("listmle_top_k_string", [{"name": "listmle", "params": {"top_k": "ten"}}], ["loss[0].params.top_k"]),
    ("listnet_temperature_inf", [{"name": "listnet", "params": {"temperature": float("inf")}}],
     ["loss[0].params.temperature"]),
    ("lipo_beta_zero", [{"name": "lipo_lambda", "params": {"beta": 0, "gain": "lin"}}],
     ["loss[0].params.beta", "loss[0].params.gain"]),
    ("unknown_loss", [{"name": "ranknett"}], ["loss[0].name: unknown loss 'ranknett' (did you mean 'ranknet'?)"]),
]


@pytest.mark.parametrize("case, loss, needles", LOSS_CASES, ids=[c[0] for c in LOSS_CASES])
def test_every_bad_loss_param_is_reported(recipe, capsys, case, loss, needles):
    raw = yaml.safe_load(recipe.read_text())
    raw["loss"] = loss
    recipe.write_text(yaml.safe_dump(raw))
    for cmd in ("validate", "train"):
        assert_one_error(*run_cli(capsys, cmd, str(recipe)), *needles)


def test_the_objective_refuses_bad_lm_params_without_the_recipe_layer():
    from lrt.config import LossTerm
    from lrt.objective.objective import Objective

    with pytest.raises(ValueError, match=r"params.normalize.*params.kernel"):
        Objective([LossTerm(name="lm", params={"normalize": "bogus", "kernel": "nope"})])


@pytest.mark.slow
def test_qlora_on_cpu_says_what_it_does_and_trains(recipe, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run([sys.executable, "-m", "lrt.cli", "train", str(recipe), "model.quantization={bits: 4}",
                          "model.lora={r: 4}", "train.max_steps=1"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert res.stderr.count("model.quantization: no CUDA") == 1, res.stderr[-3000:]
    assert (tmp_path / "run" / "metrics.jsonl").exists()
