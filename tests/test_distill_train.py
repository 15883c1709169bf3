"""`lrt train` with each score-distillation term, end to end on CPU: training mode at every optimizer step,
fp32 scores and losses under bf16 autocast, the term in the logged loss, and a SIGKILL mid-save resumed
bitwise (the kill-resume pattern of test_scale_resume, with distillation terms and teacher-scored data)."""
from __future__ import annotations

import functools
import math
import random
import sys

import pytest
import torch
import yaml

from _scale_helpers import metrics, run, run_until_fault, safetensors_weights
from test_train_mode import _metrics, _recipe, probed

from lrt.cli import main as cli_main


@pytest.fixture(scope="module")
def distill_data(tmp_path_factory):
    """The tiny lists of `tiny_data` plus a teacher score per candidate (higher = better, consistent
    with the teacher ranking, with noise so the margins are not a fixed grid)."""
    from lrt.data.schema import write_examples
    from lrt.testing.tiny import random_examples

    d = tmp_path_factory.mktemp("distill-data")
    rng = random.Random(3)
    for name, n, seed in (("train", 24, 0), ("eval", 6, 1)):
        exs = random_examples(n, 5, seed=seed)
        for e in exs:
            e.teacher_scores = [1.5 * (5 - r) + rng.uniform(-0.4, 0.4) for r in e.ranks()]
        write_examples(exs, d / f"{name}.jsonl")
    return d


class LossSpy:
    """Wraps the registered distillation losses: what the real objective handed them, and their output."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def wrap(self, fn):
        @functools.wraps(fn)  # keeps the signature: the registry reads the params from it
        def spy(scores, ranks, teacher, **kw):
            out = fn(scores, ranks, teacher, **kw)
            lists = [sorted(float(x) for x, r in zip(t_row, r_row) if r > 0)
                     for t_row, r_row in zip(teacher, ranks)]
            self.calls.append({"name": fn.__name__, "scores": scores.dtype, "teacher": teacher.dtype, "lists": lists,
                               "out": out.dtype, "grad": scores.requires_grad,
                               "autocast": torch.is_autocast_enabled("cpu"), "value": float(out.detach())})
            return out

        return spy


@pytest.mark.parametrize("term", [
    {"name": "margin_mse", "weight": 1.0},
    {"name": "kl_distill", "weight": 1.0, "params": {"temperature": 2.0}},
], ids=lambda t: t["name"])
def test_lrt_train_with_the_term_runs_in_train_mode_with_fp32_scores(term, monkeypatch, tiny_model_dir, distill_data,
                                                                     tmp_path):
    import lrt.losses.registry as reg

    spy = LossSpy()
    for name, fn in list(reg.TEACHER_SCORE_LOSSES.items()):
        monkeypatch.setitem(reg.TEACHER_SCORE_LOSSES, name, spy.wrap(fn))
    recipe = _recipe(tmp_path, tiny_model_dir, distill_data, term["name"],
                     loss=[{"name": "lm", "weight": 1.0}, term], train__precision="bf16")
    with probed(monkeypatch) as probe:
        assert cli_main(["train", str(recipe)]) == 0
    # every module trains at each of the 4 optimizer steps, evaluations in between included
    assert len(probe.step_modes) == 4 and all(on == total for on, total in probe.step_modes)
    mine = [c for c in spy.calls if c["name"] == term["name"]]
    assert len(mine) == 4 * 2  # 4 steps x 2 micro-batches, nothing else calls it
    assert all(c["scores"] == c["out"] == torch.float32 and c["grad"] and not c["autocast"] for c in mine)
    # what the loss got as teacher scores are the training rows' teacher_scores (not relevance, not padding)
    from lrt.data.schema import load_examples

    data = [sorted(e.teacher_scores) for e in load_examples(distill_data / "train.jsonl")[0]]
    assert all(any(len(d) == len(lst) and all(abs(a - b) < 1e-5 for a, b in zip(d, lst)) for d in data)
               for c in mine for lst in c["lists"])
    recs = [r for r in _metrics(tmp_path / term["name"]) if "loss" in r]
    key = f"loss/{term['name']}"
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    assert all(math.isfinite(r[key]) and r[key] > 0 for r in recs)
    # the logged term is the global mean over the step's lists: (sum of the micro-batch sums) / 4 lists
    for r, (a, b) in zip(recs, zip(mine[::2], mine[1::2])):
        assert r[key] == pytest.approx((a["value"] + b["value"]) / 4, rel=1e-5)


@pytest.mark.slow  # ~31 s
def test_sigkill_during_save_then_resume_is_bitwise_with_distillation_terms(tiny_model_dir, distill_data, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"name_or_path": str(tiny_model_dir)},
        "data": {"train": str(distill_data / "train.jsonl"), "max_length": 512},
        "prompt": {"preset": "compact", "max_passage_tokens": 24},
        "loss": [{"name": "lm", "weight": 1.0}, {"name": "margin_mse", "weight": 0.5, "params": {"margins": "all_pairs"}},
                 {"name": "kl_distill", "weight": 1.0, "params": {"temperature": 2.0}}],
        "train": {"max_steps": 6, "per_device_batch_size": 2, "grad_accum": 2, "lr": 1e-3, "warmup_steps": 2,
                  "log_every": 1, "save_every": 2, "keep_last": 2},
        "eval": {"at_start": False, "at_end": False},
        "log": {"progress": False},
        "output_dir": "unused",
    }))
    lrt = [sys.executable, "-m", "lrt.cli", "train", str(recipe)]
    ref, b = tmp_path / "uninterrupted", tmp_path / "killed"
    run(lrt + [f"output_dir={ref}"])
    log = run_until_fault(lrt + [f"output_dir={b}"], "pause:in_save:4")
    assert "LRT_FAULT: pause at in_save of step 4" in log
    assert (b / "checkpoints" / "latest").read_text() == "step-0000002"
    run(lrt + [f"output_dir={b}", "train.resume=auto"])
    recs, full = metrics(b), metrics(ref)
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5, 6]
    keys = ("loss", "loss/lm", "loss/margin_mse", "loss/kl_distill", "lr", "grad_norm", "lists")
    assert [[r[k] for k in keys] for r in recs] == [[r[k] for k in keys] for r in full]  # bitwise
    assert all(r["loss/margin_mse"] > 0 and r["loss/kl_distill"] > 0 for r in full)
    wa = safetensors_weights(ref / "final/model.safetensors")
    wb = safetensors_weights(b / "final/model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_pointwise_groups_distill_on_the_sampled_candidates_scores(monkeypatch, distill_data, tmp_path):
    """scoring.mode=pointwise: the terms get the yes-no scores of the sampled group (top-1 + 3 negatives)
    and exactly those candidates' teacher scores."""
    import lrt.losses.registry as reg
    from lrt.data.schema import load_examples
    from test_pointwise import save_pointwise_model

    spy = LossSpy()
    for name, fn in list(reg.TEACHER_SCORE_LOSSES.items()):
        monkeypatch.setitem(reg.TEACHER_SCORE_LOSSES, name, spy.wrap(fn))
    recipe = tmp_path / "pw.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"name_or_path": save_pointwise_model(tmp_path / "pw-model")},
        "data": {"train": str(distill_data / "train.jsonl"), "max_length": 256, "padding_side": "left"},
        "prompt": {"preset": "qwen3_reranker", "max_passage_tokens": 24},
        "scoring": {"mode": "pointwise", "negatives": 3},
        "loss": [{"name": "kl_distill", "params": {"temperature": 1.0}}, {"name": "margin_mse", "weight": 0.5}],
        "train": {"max_steps": 3, "per_device_batch_size": 2, "grad_accum": 1, "lr": 1e-3, "log_every": 1,
                  "save_final": False},
        "eval": {"at_start": False, "at_end": False},
        "log": {"progress": False},
        "output_dir": str(tmp_path / "pw-run"),
    }))
    assert cli_main(["train", str(recipe)]) == 0
    recs = [r for r in _metrics(tmp_path / "pw-run") if "loss" in r]
    assert [r["step"] for r in recs] == [1, 2, 3] and all(r["loss/kl_distill"] > 0 and r["loss/margin_mse"] > 0
                                                         for r in recs)
    data = [e.teacher_scores for e in load_examples(distill_data / "train.jsonl")[0]]
    assert len(spy.calls) == 2 * 3 and all(c["scores"] == torch.float32 and c["grad"] for c in spy.calls)
    for c in spy.calls:
        for lst in c["lists"]:  # 4 of the list's 5 scores, the teacher's best among them
            assert len(lst) == 4 and any(all(any(abs(x - y) < 1e-5 for y in d) for x in lst) and
                                         abs(lst[-1] - max(d)) < 1e-5 for d in data)
