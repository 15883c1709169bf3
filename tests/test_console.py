"""What `lrt train` prints: the start-of-run summary, evaluation lines with the initial order and
the best so far, interval-mean losses in metrics.jsonl, and plain progress lines (no carriage
returns) when stderr is a log file. One real `lrt train` subprocess with stderr redirected."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lrt.progress import Progress


def tiny_recipe(model_dir, data_dir, out, **train_kw) -> dict:
    t = {"max_steps": 6, "per_device_batch_size": 2, "grad_accum": 2, "lr": 1e-3, "log_every": 3, "warmup_steps": 1}
    t.update(train_kw)
    return {
        "model": {"name_or_path": str(model_dir)},
        "data": {"train": str(data_dir / "train.jsonl"), "eval": str(data_dir / "eval.jsonl"), "max_length": 512},
        "prompt": {"preset": "compact", "max_passage_tokens": 24},
        "train": t,
        "eval": {"every": 3},
        "output_dir": str(out),
    }


@pytest.fixture(scope="module")
def console_run(tiny_model_dir, tiny_data, tmp_path_factory):
    d = tmp_path_factory.mktemp("console")
    rec = tiny_recipe(tiny_model_dir, tiny_data, d / "run", save_final=False)
    (d / "r.yaml").write_text(yaml.safe_dump(rec))
    env = {**os.environ, "LRT_PROGRESS_INTERVAL": "0"}  # a plain line per update, as a slow job would get
    p = subprocess.run([sys.executable, "-m", "lrt.cli", "train", str(d / "r.yaml")], capture_output=True, text=True,
                       env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return d / "run", p


def test_start_of_run_summary(console_run):
    run, p = console_run
    err = p.stderr
    assert "lrt run" in err
    s = json.loads((run / "run_summary.json").read_text())
    # the printed figures are the measured ones
    assert s["trainable_params"] == s["total_params"] > 100_000  # full fine-tune of the tiny Llama
    assert s["lists"]["lists"] == 24 and 0 < s["lists"]["tokens_p50"] <= s["lists"]["tokens_p95"] <= s["lists"]["tokens_max"] <= 512
    pad = s["padding"]  # per_device 2: length grouping is on by default, and the summary says what it saves
    assert pad["grouped"] is True and 0 <= pad["with_grouping"] <= pad["ungrouped"] < 1
    for needle in (
        f"{100 * pad['ungrouped']:.1f}% of token slots without length grouping -> {100 * pad['with_grouping']:.1f}% with it",
        f"{s['trainable_params'] / 1e3:.2f}K trainable of {s['total_params'] / 1e3:.2f}K",
        f"24; tokens per list p50 {s['lists']['tokens_p50']}, p95 {s['lists']['tokens_p95']}, max {s['lists']['tokens_max']}",
        "0 cut to fit",
        "global 4 lists = 2 per device x 2 accum x 1 processes",
        "6 (1.00 epochs of 6 steps)",
        "fp32, float32 weights",
        "single, world size 1, device cpu",
        "none (metrics.jsonl only)",
        str(run),
    ):
        assert needle in err, needle


def test_eval_lines_show_initial_order_and_best(console_run):
    run, p = console_run
    evals = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if "eval/queries" in x]
    assert [e["step"] for e in evals] == [0, 3, 6]
    lines = [x for x in p.stderr.splitlines() if x.startswith("eval step ")]
    assert len(lines) == 3
    key = next(k for k in evals[0] if k.startswith("eval/nDCG@10") and "initial" not in k)
    best = evals[0]
    for e, line in zip(evals, lines):
        best = e if e[key] > best[key] else best
        init = e[key.replace("eval/", "eval/initial_")]
        assert line.startswith(f"eval step {e['step']}: {key[5:]} {e[key]:.4f} (initial order {init:.4f}, "
                               f"{e[key] - init:+.4f}; best {best[key]:.4f} at step {best['step']}) on 6 queries"), line


def test_interval_mean_losses(console_run):
    run, _ = console_run
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in recs if "loss" in r]
    assert [r["step"] for r in train] == [3, 6] and all(r["log_steps"] == 3 for r in train)
    assert all(r["lists"] == 12 for r in train)  # 3 steps x global batch 4


def test_non_tty_progress_is_plain_lines(console_run):
    _, p = console_run
    assert "\r" not in p.stderr  # no tqdm redraws (ours or transformers'/datasets')
    train_lines = [x for x in p.stderr.splitlines() if "lrt: train " in x]
    assert train_lines and "train 6/6 (100%)" in train_lines[-1] and "step/s" in train_lines[-1]
    assert any("lrt: encode 24/24 (100%)" in x for x in p.stderr.splitlines())


def test_interval_mean_equals_mean_of_steps(tiny_model_dir, tiny_data, tmp_path):
    from lrt.config import recipe_from_dict
    from lrt.workflows.run import train

    rec = tiny_recipe(tiny_model_dir, tiny_data, tmp_path / "run", save_final=False, max_steps=4, log_every=2)
    rec["eval"] = {"at_start": False, "at_end": False}
    rec["log"] = {"progress": False}
    res = train(recipe_from_dict(rec, []))
    logged = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [2, 4]
    for r, pair in zip(logged, (res.history[:2], res.history[2:])):
        for k in ("loss", "loss/lm", "loss/ranknet", "grad_norm"):
            assert r[k] == pytest.approx((pair[0][k] + pair[1][k]) / 2, rel=1e-9), k
        assert r["lr"] == pair[1]["lr"]  # the LR of the interval's last step
        assert pair[0]["loss"] != pair[1]["loss"]  # a mean, not a sampled step


def test_progress_plain_line_format(monkeypatch, caplog):
    monkeypatch.setenv("LRT_PROGRESS_INTERVAL", "0")
    with caplog.at_level("INFO", logger="lrt"):
        p = Progress(4, "encode", unit="list")
        p.update(2)
        p.set_postfix(loss="0.5")
        p.update(2)
        p.close()
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs[0].startswith("encode 2/4 (50%) | ") and "list/s" in msgs[0] and "eta" in msgs[0]
    assert msgs[-1].startswith("encode 4/4 (100%) loss=0.5 | ") and "eta" not in msgs[-1]
    assert len(msgs) == 2  # close() does not repeat the last line


def test_progress_quiet_below_interval(monkeypatch, caplog):
    monkeypatch.setenv("LRT_PROGRESS_INTERVAL", "3600")
    with caplog.at_level("INFO", logger="lrt"):
        p = Progress(100, "rerank", leave=False)
        for _ in range(100):
            p.update()
        p.close()
        q = Progress(10, "train")
        q.update(10)
        q.close()
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 1 and msgs[0].startswith("train 10/10 (100%)")  # one final line; the transient loop is silent


def test_list_stats_count_lists_cut_to_fit(tokenizers):
    """`truncated` in the summary = lists whose passages had to be cut below max_passage_tokens to fit."""
    from lrt.data.collate import encode_example
    from lrt.data.prompts import PromptTemplate
    from lrt.testing.tiny import random_examples
    from lrt.train.console import list_stats

    tok = tokenizers["chatml"]
    tpl = PromptTemplate.preset("compact", max_passage_tokens=24)
    exs = random_examples(3, 5, seed=3)
    full = [encode_example(tok, tpl, e, max_length=4096, id_token_ids=None).to_row() for e in exs]
    assert not any(r["truncated"] for r in full)
    longest = max(len(r["input_ids"]) for r in full)
    cut = [encode_example(tok, tpl, e, max_length=longest - 5, id_token_ids=None).to_row() for e in exs]
    n_cut = sum(len(f["input_ids"]) > longest - 5 for f in full)
    assert n_cut >= 1 and [r["truncated"] for r in cut] == [len(f["input_ids"]) > longest - 5 for f in full]
    s = list_stats(cut, longest - 5)
    assert s["truncated"] == n_cut and s["tokens_max"] <= longest - 5 and s["lists"] == 3


def test_progress_eta_follows_the_recent_rate(monkeypatch, caplog):
    """A run that sped up 8x: rate and ETA are the last minutes', not the average since the start."""
    import lrt.progress as progress

    clock = [1000.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    monkeypatch.setenv("LRT_PROGRESS_INTERVAL", "30")
    with caplog.at_level("INFO", logger="lrt"):
        p = Progress(5000, "train", unit="step")
        for _ in range(300):  # 300 steps at 1 step/s
            clock[0] += 1.0
            p.update()
        for _ in range(1440):  # then 8 steps/s for 180 s, past the 120 s window (0.125: exact in binary)
            clock[0] += 0.125
            p.update()
    line = p.line()  # 3,260 steps left: 06:47 at 8 steps/s; the since-start rate (3.6/s) would say 15:05
    assert "1740/5000" in line and "8.00 step/s" in line and "08:00 elapsed, eta 06:47" in line, line
    assert any("step/s" in r.getMessage() for r in caplog.records)  # the periodic lines use the same rate
