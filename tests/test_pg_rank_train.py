"""`lrt train` with a pg_rank term: every scoring mode that yields candidate scores, mixed with other
terms; the sampled rankings depend only on (train.seed, step, list), so 1 x 8, 8 x 1 and 2 x 4 runs of
the same global batch agree; train mode with fp32 scores under bf16 autocast; bitwise resume after
SIGKILL (the pattern of test_scale_resume)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from _scale_helpers import metrics, run, run_until_fault, safetensors_weights
from lrt.cli import main as cli_main

PG = {"name": "pg_rank", "weight": 1.0, "params": {"samples": 4, "reward": "reasonrank", "entropy": 0.01}}


def _write(path: Path, model_dir, data_dir, **over) -> Path:
    raw = {
        "model": {"name_or_path": str(model_dir)},
        "data": {"train": str(data_dir / "train.jsonl"), "max_length": 512},
        "prompt": {"preset": "compact", "max_passage_tokens": 24},
        "loss": [{"name": "lm", "weight": 0.5}, PG],
        "train": {"max_steps": 3, "per_device_batch_size": 8, "grad_accum": 1, "lr": 1e-3, "warmup_steps": 0,
                  "log_every": 1, "save_final": True},
        "eval": {"at_start": False, "at_end": False},
        "log": {"progress": False},
        "output_dir": "unused",
    }
    for k, v in over.items():
        sec, _, key = k.partition("__")
        if key:
            raw.setdefault(sec, {})[key] = v
        else:
            raw[sec] = v
    path.write_text(yaml.safe_dump(raw))
    return path


class Spy:
    """Wraps the registered pg_rank: what the objective hands it, under what autocast/mode."""

    def __init__(self, monkeypatch) -> None:
        import lrt.losses.registry as reg
        from lrt.scoring import decoder_and_head

        real = reg.RANKING_LOSSES["pg_rank"]
        self.calls: list[dict] = []
        self.model_autocast: list[bool] = []

        import functools

        @functools.wraps(real)
        def spy(scores, ranks, relevance=None, seeds=None, **kw):
            self.calls.append({"dtype": scores.dtype, "grad": scores.requires_grad, "B": scores.shape[0],
                               "seeds": None if seeds is None else seeds.tolist()})
            return real(scores, ranks, relevance, seeds, **kw)

        monkeypatch.setitem(reg.RANKING_LOSSES, "pg_rank", spy)
        import lrt.train.loop as loop

        real_load = loop.load_model

        def load(r, tok):
            m = real_load(r, tok)
            decoder, _ = decoder_and_head(m)
            decoder.register_forward_hook(lambda mod, a, o: self.model_autocast.append(
                torch.is_autocast_enabled("cpu") and mod.training))
            return m

        monkeypatch.setattr(loop, "load_model", load)


def _records(d: Path) -> list[dict]:
    return [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]


def test_first_token_bf16_autocast_gives_fp32_scores_and_trains(monkeypatch, tiny_model_dir, tiny_data, tmp_path):
    spy = Spy(monkeypatch)
    out = tmp_path / "bf16"
    recipe = _write(tmp_path / "r.yaml", tiny_model_dir, tiny_data, train__precision="bf16")
    assert cli_main(["train", str(recipe), f"output_dir={out}", "train.per_device_batch_size=4",
                     "train.grad_accum=2"]) == 0
    assert len(spy.calls) == 3 * 2 and all(c["dtype"] == torch.float32 and c["grad"] for c in spy.calls)
    assert spy.model_autocast and all(spy.model_autocast)  # the decoder ran under bf16 autocast, in train mode
    # each list of a step has its own seed, and the next step draws other ones
    seeds = [c["seeds"] for c in spy.calls]
    assert all(s is not None and len(set(s)) == 4 for s in seeds)
    assert not set(seeds[0]) & set(seeds[2])
    recs = _records(out)
    assert [r["step"] for r in recs] == [1, 2, 3]
    # the reported pg_rank value is 1 - mean sampled reward (reward <= 1.3: nDCG + 0.2 recall + 0.1 RBO)
    assert all(-0.3 <= r["loss/pg_rank"] <= 1.0 and r["loss/lm"] > 0 for r in recs)


def _weights(d: Path) -> dict[str, torch.Tensor]:
    return safetensors_weights(d / "final/model.safetensors")


def test_same_global_batch_split_1x8_8x1_4x2_gives_the_same_run(tiny_model_dir, tiny_data, tmp_path):
    recipe = _write(tmp_path / "r.yaml", tiny_model_dir, tiny_data)
    runs = {}
    for pd, ga in ((8, 1), (1, 8), (2, 4)):
        d = tmp_path / f"{pd}x{ga}"
        # length grouping explicitly on: its default (on iff per_device_batch_size > 1) would give
        # the 1 x 8 run other lists per step, whatever the loss
        assert cli_main(["train", str(recipe), f"output_dir={d}", f"train.per_device_batch_size={pd}",
                         f"train.grad_accum={ga}", "data.group_by_length=true"]) == 0
        runs[(pd, ga)] = d
    ref = _records(runs[(8, 1)])
    assert len(ref) == 3 and all(r["lists"] == 8 for r in ref)
    for key, d in runs.items():
        got = _records(d)
        for g, w in zip(got, ref):
            for k in ("loss", "loss/pg_rank", "loss/lm", "grad_norm"):
                assert g[k] == pytest.approx(w[k], rel=1e-5), (key, g["step"], k)
        wa, wb = _weights(runs[(8, 1)]), _weights(d)
        assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) <= 1e-5, key


@pytest.mark.parametrize("mode", ["full_special_ids", "pointwise"])
def test_other_scoring_modes_train_with_pg_rank(mode, monkeypatch, tiny_model_dir, tiny_data, tmp_path):
    spy = Spy(monkeypatch)
    if mode == "pointwise":
        from test_pointwise import save_pointwise_model

        model = save_pointwise_model(tmp_path / "pw")
        over = dict(prompt={"preset": "qwen3_reranker", "max_passage_tokens": 24},
                    scoring={"mode": "pointwise", "negatives": 3, "pair_batch": 4},
                    data={"train": str(tiny_data / "train.jsonl"), "max_length": 256, "padding_side": "left"},
                    loss=[{"name": "softmax_ce"}, PG])
    else:
        model = tiny_model_dir
        over = dict(prompt={"preset": "compact", "identifiers": "special", "max_passage_tokens": 8},
                    loss=[{"name": "lm"}, {"name": "ranknet", "weight": 10.0, "params": {"weighting": "first"}}, PG])
    recipe = _write(tmp_path / "r.yaml", model, tiny_data, **over)
    out = tmp_path / mode
    assert cli_main(["train", str(recipe), f"output_dir={out}", "train.max_steps=2", "train.per_device_batch_size=4"]) == 0
    recs = _records(out)
    assert [r["step"] for r in recs] == [1, 2] and all(-0.3 <= r["loss/pg_rank"] <= 1.0 for r in recs)
    assert len(spy.calls) == 2 and all(c["dtype"] == torch.float32 and c["grad"] and c["seeds"] for c in spy.calls)
    assert all(c["B"] == 4 for c in spy.calls)


@pytest.mark.slow  # ~21 s
def test_sigkill_during_save_then_resume_is_bitwise(tiny_model_dir, tiny_data, tmp_path):
    recipe = _write(tmp_path / "r.yaml", tiny_model_dir, tiny_data,
                    train={"max_steps": 6, "per_device_batch_size": 2, "grad_accum": 2, "lr": 1e-3, "warmup_steps": 2,
                           "log_every": 1, "save_every": 2, "keep_last": 2})
    lrt = [sys.executable, "-m", "lrt.cli", "train", str(recipe)]
    ref, b = tmp_path / "uninterrupted", tmp_path / "killed"
    run(lrt + [f"output_dir={ref}"])
    log = run_until_fault(lrt + [f"output_dir={b}"], "pause:in_save:4")
    assert "LRT_FAULT: pause at in_save of step 4" in log
    assert (b / "checkpoints/latest").read_text() == "step-0000002"
    run(lrt + [f"output_dir={b}", "train.resume=auto"])
    keys = ("loss", "loss/lm", "loss/pg_rank", "lr", "grad_norm", "lists")
    recs, full = metrics(b), metrics(ref)
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5, 6]
    assert [[r[k] for k in keys] for r in recs] == [[r[k] for k in keys] for r in full]  # bitwise
    wa, wb = safetensors_weights(ref / "final/model.safetensors"), safetensors_weights(b / "final/model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_two_processes_sample_what_one_process_samples(tiny_model_dir, tiny_data, tmp_path):
    """2 ranks x 2 accumulation x 2 lists (DDP, gloo) vs 1 process x 8 lists in one micro-batch: the same
    global batches, the same draws (a list sits at another position of another micro-batch)."""
    recipe = _write(tmp_path / "r.yaml", tiny_model_dir, tiny_data)
    one, two = tmp_path / "one", tmp_path / "two"
    run([sys.executable, "-m", "lrt.cli", "train", str(recipe), f"output_dir={one}", "train.grad_accum=1",
         "train.per_device_batch_size=8", "data.group_by_length=true"])
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "lrt.cli",
         "train", str(recipe), f"output_dir={two}", "train.grad_accum=2", "train.per_device_batch_size=2",
         "data.group_by_length=true"])
    a, b = metrics(one), metrics(two)
    assert [r["step"] for r in b] == [1, 2, 3] and all(r["lists"] == 8 for r in b)
    for g, w in zip(b, a):
        for k in ("loss", "loss/pg_rank", "loss/lm", "grad_norm"):
            assert g[k] == pytest.approx(w[k], rel=1e-5), (g["step"], k)
    wa, wb = _weights(one), _weights(two)
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) <= 1e-5


def test_first_mistral_pgrank_recipe_validates_and_reads_the_shipped_jobs(tmp_path):
    from lrt.config import load_recipe
    from lrt.prep.config import load_job

    repo = Path(__file__).resolve().parents[1]
    path = repo / "recipes" / "first-mistral-7b-pgrank.yaml"
    p = subprocess.run([sys.executable, "-m", "lrt.cli", "validate", "--no-file-check", str(path)], cwd=tmp_path,
                       capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.startswith("ok:") and "10.0 x pg_rank" in p.stdout, p.stderr
    r = load_recipe(path, check_files=False)
    stage1 = load_recipe(repo / "recipes" / "first-mistral-7b.yaml", check_files=False)
    assert r.model.name_or_path == str(Path(stage1.output_dir) / "final")  # stage 2 starts from stage 1's export
    assert r.data.train == stage1.data.train and r.data.eval == stage1.data.eval
    assert str(Path(r.data.train).parent) == load_job(repo / "data_prep" / "rankzephyr-import.yaml").output.dir
    assert str(Path(r.data.eval).parent) == load_job(repo / "data_prep" / "dl19-eval.yaml").output.dir
    assert [t.name for t in r.loss] == ["lm", "pg_rank"] and r.eval.at_start
