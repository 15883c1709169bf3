"""`lrt bench train-step` and `lrt bench data` run end to end at tiny sizes and report sane JSON.

Tiny sizes (seq 1024, vocab 2000, one timed step): this checks the machinery (a real Trainer per
fresh worker process, RSS and saved-activation reading, JSON schema, the dispatcher), not the
acceptance ratios, which only hold at seq 4096 / vocab 151,936 where the logits dominate.
"""
from __future__ import annotations

import json

import pytest

from lrt.cli.bench import main as bench_main

TRAIN_KEYS = {
    "setting", "grad_ckpt", "seq", "vocab", "tokens_per_step", "target_tokens", "train_mode", "collate_ms",
    "collate_frac_of_step",
    *(f"{v}_{k}" for v in ("lrt", "naive", "floor")
      for k in ("peak_mb", "import_mb", "step_mb", "step_s", "tokens_per_s", "activation_mb")),
    "mem_ratio", "mem_ratio_raw_rss", "speed_ratio", "meets_mem", "meets_speed",
    "mem_ratio_floor", "time_ratio_floor", "activation_ratio_floor",
}
DATA_KEYS = {"setting", "window", "tokens_per_example", "examples_per_s_1proc", "examples_per_s_2proc",
             "speedup_2proc", "collate_ms_batch1", "collate_ms_batch8"}


def _json_lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


SMALL = ["--seq", "1024", "--vocab", "2000", "--hidden", "64", "--layers", "2", "--intermediate", "128",
         "--steps", "1", "--warmup", "1", "--chunk-size", "64", "--first-ids", "8", "--fullrank-ids", "10"]


@pytest.mark.slow  # ~43 s: a real bench subprocess
def test_bench_train_step_smoke(capsys):
    """All three variants run the trainer's own model and batches, with checkpointing off and on."""
    rc = bench_main(["train-step", *SMALL, "--settings", "first", "--grad-ckpt", "off,on"])
    assert rc == 0
    out = capsys.readouterr().out
    recs = _json_lines(out)
    assert [(r["setting"], r["grad_ckpt"]) for r in recs] == [("first", False), ("first", True)]
    for r in recs:
        assert TRAIN_KEYS <= set(r), TRAIN_KEYS - set(r)
        assert r["train_mode"]  # the Trainer (not the benchmark) put every module in training mode
        assert 900 < r["tokens_per_step"] <= 1024  # passages were cut to fill --seq
        for v in ("lrt", "naive", "floor"):
            assert r[f"{v}_peak_mb"] >= r[f"{v}_import_mb"] > 0  # equal at toy sizes (see below)
            assert r[f"{v}_step_s"] > 0 and r[f"{v}_tokens_per_s"] > 0 and r[f"{v}_activation_mb"] > 0
        # at this toy size a step can leave peak RSS at the post-import level: then the memory ratio is
        # None (no baseline to divide by), never a division error or a made-up number
        assert r["mem_ratio"] is None or r["mem_ratio"] > 0
        assert r["mem_ratio_floor"] is None or r["mem_ratio_floor"] > 0
        assert r["speed_ratio"] > 0 and r["collate_ms"] > 0 and r["time_ratio_floor"] > 0
        assert r["loss_rel_diff"] < 1e-4  # lrt and naive computed the same loss on the same weights and batch
        assert r["lrt_activation_mb"] >= r["floor_activation_mb"]  # the floor is a lower bound
    off, on = recs
    for v in ("lrt", "naive", "floor"):  # checkpointing engaged in the real step: far fewer saved activations
        assert on[f"{v}_activation_mb"] < 0.5 * off[f"{v}_activation_mb"], v
    assert "| first (lm+ranknet) | on | lrt |" in out and "**lrt / floor**" in out  # the markdown table


@pytest.mark.parametrize("argv", [["--grad-ckpt", "maybe"], ["--variants", "naive"], ["--settings", "nope"]])
def test_bench_train_step_bad_args(argv, capsys):
    assert bench_main(["train-step", *argv]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_bench_data_smoke(capsys):
    rc = bench_main(["data", "--examples", "4", "--repeats", "1", "--settings", "alpha20,special100", "--procs", "1,2"])
    assert rc == 0
    recs = _json_lines(capsys.readouterr().out)
    assert [r["setting"] for r in recs] == ["alpha20", "special100"]
    for r in recs:
        assert DATA_KEYS <= set(r), DATA_KEYS - set(r)
        assert r["examples_per_s_1proc"] > 0 and r["examples_per_s_2proc"] > 0 and r["tokens_per_example"] > 0
    assert recs[1]["tokens_per_example"] > recs[0]["tokens_per_example"]  # 100 passages vs 20


@pytest.mark.parametrize("argv", [[], ["-h"]])
def test_bench_usage(argv, capsys):
    assert bench_main(argv) == 0
    assert "train-step" in capsys.readouterr().out


def test_bench_unknown_subcommand(capsys):
    assert bench_main(["nope"]) == 2
    assert "unknown bench" in capsys.readouterr().err
