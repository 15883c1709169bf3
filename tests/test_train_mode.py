"""`lrt train` trains in training mode, through the real CLI and the real Trainer step.

`from_pretrained` returns a model in eval mode; before issue 10 nothing switched it back, so
NEFTune added no noise, LoRA dropout was off and gradient checkpointing never engaged
(transformers checkpoints a layer only when `self.training`). These tests run `lrt train RECIPE`
with a probe installed on the model the trainer loads (the only test-side mechanism: hooks on
the loaded model, a global optimizer-step pre-hook, and a phase flag around evaluation and the
LiPO reference pass) and check what the real loop did:

- every module is in training mode at every optimizer step, also after each evaluation;
- NEFTune noise is on the embeddings in training forwards and absent in evaluation / pi_ref;
- gradient checkpointing recomputes every decoder layer in backward (2x layer bodies) and the
  bytes autograd saves for backward in the real step drop accordingly;
- LoRA dropout zeroes activations in training forwards and none in evaluation.
"""
from __future__ import annotations

import contextlib
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_pre_hook
import yaml

from lrt.cli import main as cli_main

LAYERS = 2
LORA = {"r": 4, "alpha": 8, "dropout": 0.5, "target_modules": ["q_proj", "v_proj"]}


class Probe:
    """Records, per phase ("train" | "eval" | "ref"), what the real training loop did to the model."""

    def __init__(self) -> None:
        self.phase = "train"
        self.model: torch.nn.Module | None = None
        self.noise: dict[str, list[float]] = defaultdict(list)  # max |embedding output - lookup|
        self.layer_bodies: Counter[str] = Counter()  # decoder-layer MLP calls (recomputes included)
        self.saved_bytes: list[int] = []  # per training forward of the decoder
        self.dropout_zero_frac: dict[str, list[float]] = defaultdict(list)
        self.step_modes: list[tuple[int, int]] = []  # (modules in training mode, all modules) per optimizer step
        self._ctx: Any = None

    # installed on the model `lrt.train.loop.load_model` returns
    def install(self, model: torch.nn.Module) -> torch.nn.Module:
        from lrt.scoring import decoder_and_head

        self.model = model
        emb = model.get_input_embeddings()

        def emb_hook(mod, args, out):
            raw = F.embedding(args[0], mod.weight)
            self.noise[self.phase].append(float((out - raw).detach().abs().max()))

        emb.register_forward_hook(emb_hook)  # after NEFTune's hook: sees the noised output
        decoder, _ = decoder_and_head(model)
        for layer in decoder.layers:
            # transformers checkpoints a layer's `forward`, so hooks on the layer itself fire once;
            # its MLP runs inside that forward, i.e. again when backward recomputes the layer (a
            # pre-hook: torch stops the recompute early, once the last saved tensor is rebuilt)
            layer.mlp.register_forward_pre_hook(lambda m, a: self.layer_bodies.update([self.phase]))
        # closures, not bound methods: the LiPO frozen copy deep-copies the model with its hooks
        decoder.register_forward_pre_hook(lambda m, a: self._start_saved())
        decoder.register_forward_hook(lambda m, a, o: self._stop_saved())
        for name, m in model.named_modules():
            if name.endswith("lora_dropout.default"):
                m.register_forward_hook(lambda mod, a, o: self.dropout_zero_frac[self.phase].append(
                    float(((o == 0) & (a[0] != 0)).float().mean().detach())))
        return model

    def _start_saved(self) -> None:
        if self.phase != "train" or not torch.is_grad_enabled():
            return
        params = {p.untyped_storage().data_ptr() for p in self.model.parameters()}
        seen: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            ptr = t.untyped_storage().data_ptr()
            if ptr not in params:
                seen[ptr] = t.untyped_storage().nbytes()
            return t

        # Checkpointed layers push their own saved-tensor hooks on top of this one, so only what
        # autograd really keeps (layer inputs under checkpointing, everything without) is counted.
        self._ctx = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        self._ctx.__enter__()
        self._seen = seen

    def _stop_saved(self) -> None:
        if self._ctx is None:
            return
        self._ctx.__exit__(None, None, None)
        self._ctx = None
        self.saved_bytes.append(sum(self._seen.values()))

    def on_optimizer_step(self, opt, args, kwargs):
        mods = list(self.model.modules())
        self.step_modes.append((sum(m.training for m in mods), len(mods)))


@contextlib.contextmanager
def probed(monkeypatch):
    with monkeypatch.context() as mp:  # undone on exit: each run gets its own probe only
        yield from _probed(mp)


def _probed(monkeypatch):
    import lrt.train.loop as loop
    from lrt.objective.module import RerankModule

    probe = Probe()
    real_load, real_eval, real_ref = loop.load_model, loop.Trainer.evaluate, RerankModule.reference_logprobs

    def phase(name, fn):
        def run(*a, **kw):
            before, probe.phase = probe.phase, name
            try:
                return fn(*a, **kw)
            finally:
                probe.phase = before
        return run

    monkeypatch.setattr(loop, "load_model", lambda r, tok: probe.install(real_load(r, tok)))
    monkeypatch.setattr(loop.Trainer, "evaluate", phase("eval", real_eval))
    monkeypatch.setattr(RerankModule, "reference_logprobs", phase("ref", real_ref))
    handle = register_optimizer_step_pre_hook(probe.on_optimizer_step)
    try:
        yield probe
    finally:
        handle.remove()


def _recipe(tmp_path: Path, model_dir, data_dir, name: str, **over: Any) -> Path:
    raw = {
        "model": {"name_or_path": str(model_dir), "neftune_alpha": 5.0},
        "data": {"train": str(data_dir / "train.jsonl"), "eval": str(data_dir / "eval.jsonl"), "max_length": 512},
        "prompt": {"preset": "compact", "max_passage_tokens": 24},
        "train": {"max_steps": 4, "per_device_batch_size": 2, "grad_accum": 2, "lr": 1e-3, "save_final": False,
                  "log_every": 1},
        "eval": {"every": 2, "at_start": True, "at_end": True},
        "log": {"progress": False},
        "output_dir": str(tmp_path / name),
    }
    for k, v in over.items():  # "section__key" or a top-level key
        if "__" in k:
            sec, key = k.split("__")
            raw[sec][key] = v
        else:
            raw[k] = v
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _train(monkeypatch, recipe: Path, *overrides: str) -> Probe:
    with probed(monkeypatch) as probe:
        assert cli_main(["train", str(recipe), *overrides]) == 0
    return probe


def _metrics(run_dir: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_full_finetune_trains_in_train_mode_with_neftune_and_checkpointing(monkeypatch, tiny_model_dir, tiny_data, tmp_path):
    runs = {}
    for gc in (False, True):
        recipe = _recipe(tmp_path, tiny_model_dir, tiny_data, f"gc{int(gc)}")
        runs[gc] = _train(monkeypatch, recipe, f"model.gradient_checkpointing={str(gc).lower()}")
    for gc, p in runs.items():
        # 4 optimizer steps, evaluations before step 1, after step 2 and at the end
        assert len(p.step_modes) == 4
        assert all(on == total for on, total in p.step_modes), p.step_modes  # every module training, every step
        assert len(p.noise["eval"]) > 0 and len(p.noise["train"]) == 4 * 2  # 2 micro-batches per step
        assert min(p.noise["train"]) > 0  # NEFTune noise in every training forward
        assert max(p.noise["eval"]) == 0  # ... and none while evaluating
    # a layer body runs once per training forward without checkpointing, twice with it (recompute)
    assert runs[False].layer_bodies["train"] == 4 * 2 * LAYERS
    assert runs[True].layer_bodies["train"] == 2 * runs[False].layer_bodies["train"]
    assert runs[True].layer_bodies["eval"] == runs[False].layer_bodies["eval"] > 0  # no checkpointing in eval
    # the activations autograd keeps for backward, measured in the real step, drop accordingly
    off, on = runs[False].saved_bytes, runs[True].saved_bytes
    assert len(off) == len(on) == 8
    print("saved bytes per training forward, checkpointing off / on:", off, on)
    assert max(on) < 0.3 * min(off), (on, off)
    # recomputation changes memory, not the numbers (same batches, same NEFTune draws)
    l_off = [r["loss"] for r in _metrics(tmp_path / "gc0") if "loss" in r]
    l_on = [r["loss"] for r in _metrics(tmp_path / "gc1") if "loss" in r]
    assert len(l_off) == 4 and l_on == pytest.approx(l_off, rel=1e-4)


def test_lora_dropout_is_active_in_training_only(monkeypatch, tiny_model_dir, tiny_data, tmp_path):
    recipe = _recipe(tmp_path, tiny_model_dir, tiny_data, "lora", model__lora=LORA)
    p = _train(monkeypatch, recipe, "model.gradient_checkpointing=true")
    assert len(p.step_modes) == 4 and all(on == total for on, total in p.step_modes), p.step_modes
    names = [n for n, _ in p.model.named_modules()]
    assert any(n.endswith("lora_dropout.default") for n in names)
    # p=0.5 dropout zeroes about half of the adapter inputs in every training forward (and recompute)
    train = p.dropout_zero_frac["train"]
    assert len(train) == 4 * 2 * LAYERS * 2 * 2  # steps x micro x layers x (q, v) x (forward + recompute)
    assert min(train) > 0.3 and max(train) < 0.7
    assert p.dropout_zero_frac["eval"] and max(p.dropout_zero_frac["eval"]) == 0
    assert min(p.noise["train"]) > 0 and max(p.noise["eval"]) == 0


@pytest.mark.parametrize("lora", [True, False], ids=["lora-disabled-adapter", "full-ft-frozen-copy"])
def test_lipo_reference_pass_is_in_eval_mode(lora, monkeypatch, tiny_model_dir, tiny_data, tmp_path):
    """pi_ref is the model itself: no NEFTune noise and no dropout in the reference forward, while
    the policy forward of the same step is noised."""
    extra = {"model__lora": LORA} if lora else {}
    recipe = _recipe(tmp_path, tiny_model_dir, tiny_data, f"lipo{int(lora)}", **extra,
                     loss=[{"name": "lipo_lambda", "weight": 1.0, "params": {"beta": 0.5}}])
    p = _train(monkeypatch, recipe, "eval.every=null", "eval.at_start=false", "eval.at_end=false", "train.max_steps=2")
    assert len(p.step_modes) == 2 and all(on == total for on, total in p.step_modes)
    assert min(p.noise["train"]) > 0
    # one reference forward per micro-batch (the frozen copy carries the probe's hooks too)
    assert len(p.noise["ref"]) == 2 * 2 and max(p.noise["ref"]) == 0
    if lora:
        assert not p.dropout_zero_frac["ref"]  # adapters disabled: their dropout never runs
        assert min(p.dropout_zero_frac["train"]) > 0.3
