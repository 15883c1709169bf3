"""`lrt bench train-step` and `lrt bench data` run end to end at tiny sizes and report sane JSON.

Tiny sizes (seq 256, vocab 2000, one timed step): this checks the machinery (fresh worker
processes, RSS reading, JSON schema, the dispatcher), not the acceptance ratios, which only hold
at seq 4096 / vocab 151,936 where the logits dominate.
"""
from __future__ import annotations

import json

import pytest

from lrt.bench import main as bench_main

TRAIN_KEYS = {
    "setting", "seq", "vocab", "target_tokens", "lrt_peak_mb", "lrt_import_mb", "lrt_step_mb", "lrt_step_s",
    "lrt_tokens_per_s", "naive_peak_mb", "naive_import_mb", "naive_step_mb", "naive_step_s", "naive_tokens_per_s",
    "mem_ratio", "mem_ratio_raw_rss", "speed_ratio", "collate_ms", "collate_frac_of_step", "meets_mem", "meets_speed",
}
DATA_KEYS = {"setting", "window", "tokens_per_example", "examples_per_s_1proc", "examples_per_s_2proc",
             "speedup_2proc", "collate_ms_batch1", "collate_ms_batch8"}


def _json_lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_bench_train_step_smoke(capsys):
    rc = bench_main(["train-step", "--seq", "256", "--vocab", "2000", "--hidden", "64", "--layers", "2",
                     "--intermediate", "128", "--steps", "1", "--warmup", "1", "--chunk-size", "64",
                     "--settings", "first,fullrank", "--fullrank-ids", "20"])
    assert rc == 0
    out = capsys.readouterr().out
    recs = _json_lines(out)
    assert [r["setting"] for r in recs] == ["first", "fullrank"]
    for r in recs:
        assert TRAIN_KEYS <= set(r), TRAIN_KEYS - set(r)
        for v in ("lrt", "naive"):
            assert r[f"{v}_peak_mb"] > r[f"{v}_import_mb"] > 0
            assert r[f"{v}_step_s"] > 0 and r[f"{v}_tokens_per_s"] > 0
        assert r["mem_ratio"] > 0 and r["speed_ratio"] > 0 and r["collate_ms"] > 0
        assert r["loss_rel_diff"] < 1e-4  # both variants computed the same loss on the same weights
    assert "| first (lm+ranknet) |" in out  # the markdown table


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
