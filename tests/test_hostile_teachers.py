"""Prep teachers that do not rank, through `lrt prep JOB.yaml`: an OpenAI-compatible teacher that refuses
every window, or an `hf` teacher whose every answer is invalid, fails the job (exit 2, one `error:` line
with the counts, no data written) instead of exiting 0 with the first-stage order as labels; refusals are
never cached; a few invalid answers under `labels.max_invalid_fraction` pass; malformed or non-finite /
positive-logprob answers fail their windows with the reason (exit 3, re-run to retry). No API key in any
stream or file."""
from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lrt.data.schema import write_examples
from lrt.testing.hostile_server import ScriptedServer, chat
from lrt.testing.tiny import random_examples, save_tiny_model

REPO = Path(__file__).resolve().parents[1]
KEY = "sk-hostile-teacher-0123456789"
_LINE = re.compile(r"^\[(\d+)\]", re.M)


def _n(body) -> int:
    return len(_LINE.findall(body["messages"][-1]["content"]))


def good(n, m, p, body):
    """Ranks every window in display order: a valid permutation."""
    return 200, {}, chat(" > ".join(f"[{i}]" for i in range(1, _n(body) + 1)))


def job(d: Path, teacher: dict, **labels) -> Path:
    write_examples(random_examples(5, 8, seed=3), d / "rows.jsonl")
    j = {"name": "hostile", "source": {"kind": "canonical", "path": str(d / "rows.jsonl")}, "teacher": teacher,
         "labels": {"window": 4, "stride": 2, "mode": "freeze_prefix", **labels}, "output": {"dir": str(d / "out")}}
    path = d / "job.yaml"
    path.write_text(yaml.safe_dump(j))
    return path


def openai_teacher(url: str) -> dict:
    return {"kind": "openai", "base_url": url, "model": "m", "api_key_env": "LRT_HOSTILE_KEY", "concurrency": 2,
            "max_retries": 1, "backoff_s": 0.01, "timeout_s": 10}


def prep(path: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), "LRT_HOSTILE_KEY": KEY}
    return subprocess.run([sys.executable, "-m", "lrt.cli", "prep", str(path), *extra], cwd=path.parent, env=env,
                          capture_output=True, text=True, timeout=300)


def no_secret(res: subprocess.CompletedProcess, d: Path) -> None:
    assert KEY not in res.stderr + res.stdout
    for f in d.rglob("*"):
        if f.is_file():
            assert KEY.encode() not in f.read_bytes(), f


def error_line(res: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in res.stderr + res.stdout, res.stderr[-3000:]
    lines = [x for x in res.stderr.splitlines() if "error:" in x]
    assert len(lines) == 1, res.stderr[-3000:]
    return lines[0]


def cached_answers(d: Path) -> int:
    dbs = list((d / "out" / "cache").glob("*.sqlite"))
    if not dbs:
        return 0
    with sqlite3.connect(dbs[0]) as con:
        return con.execute("select count(*) from answers").fetchone()[0]


REFUSALS = {
    "sorry_text": lambda b: chat("I'm sorry, but I can't help with ranking these passages."),
    "null_content_refusal": lambda b: chat(None, choices=[{"index": 0, "finish_reason": "stop", "message": {
        "role": "assistant", "content": None, "refusal": "I can't assist with that."}}]),
    "empty": lambda b: chat(""),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_teacher_refusing_every_window_fails_the_job(tmp_path, case):
    with ScriptedServer(lambda n, m, p, b: (200, {}, REFUSALS[case](b))) as srv:
        res = prep(job(tmp_path, openai_teacher(srv.url)))
    assert res.returncode == 2, res.stderr[-3000:]
    line = error_line(res)
    assert "30 of 30 answered teacher windows were invalid (30 refused" in line and "max_invalid_fraction" in line
    assert not (tmp_path / "out" / "data.parquet").exists() and not list((tmp_path / "out").glob("shards/*"))
    assert cached_answers(tmp_path) == 0  # refusals are not answers: a re-run asks again
    assert len(srv.seen) == 30  # 5 queries x 6 windows, each asked once (a refusal is a 200: not retried)
    no_secret(res, tmp_path)


def test_few_invalid_answers_pass_and_the_key_sets_the_threshold(tmp_path):
    def script(n, m, p, body):  # one incomplete answer (repaired) among 30 windows: 3.3 %
        return (200, {}, chat("[2] > [1]")) if n == 1 else good(n, m, p, body)

    with ScriptedServer(script) as srv:
        path = job(tmp_path, openai_teacher(srv.url))
        res = prep(path)
        assert res.returncode == 0, res.stderr[-3000:]
        card = json.loads((tmp_path / "out" / "card.json").read_text())
        assert card["counts"]["invalid_responses"] == 1 and card["counts"]["calls"] == 30
        strict = prep(path, "labels.max_invalid_fraction=0.01", "--force")  # answers replayed from the cache
    assert strict.returncode == 2 and "1 of 30 answered" in error_line(strict)
    assert "labels.max_invalid_fraction=0.01" in error_line(strict)
    no_secret(res, tmp_path)


@pytest.mark.slow  # ~14 s
def test_all_invalid_hf_teacher_fails_unless_allowed(tmp_path):
    model = save_tiny_model(tmp_path / "model", "chatml")
    teacher = {"kind": "hf", "model": str(model), "batch_size": 4, "dtype": "float32"}
    d = tmp_path / "job"
    d.mkdir()
    path = job(d, teacher)
    res = prep(path, "prompt.preset=compact", "prompt.max_passage_tokens=8")
    assert res.returncode == 2, res.stderr[-3000:]
    line = error_line(res)
    m = re.search(r"(\d+) of (\d+) answered teacher windows were invalid", line)
    assert m and int(m.group(1)) / int(m.group(2)) > 0.05 and "labels.max_invalid_fraction=0.05" in line
    assert not (d / "out" / "data.parquet").exists()
    ok = prep(path, "prompt.preset=compact", "prompt.max_passage_tokens=8", "labels.max_invalid_fraction=1")
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert (d / "out" / "data.parquet").exists()


BAD_ANSWERS = {
    "message_string": (json.dumps({"choices": [{"index": 0, "message": "[1] > [2]"}]}).encode(), "bad_response"),
    "choices_strings": (json.dumps({"choices": ["[1] > [2]"]}).encode(), "bad_response"),
    "usage_list": (chat("[1] > [2] > [3] > [4]", usage=[1]), "usage is list"),
    "logprob_infinity": (chat("[1] > [2] > [3] > [4]", choices=[{"index": 0, "message": {"content": "[1] > [2]"},
                         "logprobs": {"content": [{"token": "[", "logprob": float("inf")}]}}]), "Infinity"),
    "logprob_plus_50": (chat("[1]", choices=[{"index": 0, "message": {"content": "[1] > [2]"},
                        "logprobs": {"content": [{"token": "[", "logprob": 50.0, "top_logprobs": []}]}}]), "50.0"),
}


@pytest.mark.parametrize("case", list(BAD_ANSWERS))
def test_malformed_teacher_answers_fail_their_windows_with_the_reason(tmp_path, case):
    body, why = BAD_ANSWERS[case]
    with ScriptedServer(lambda n, m, p, b: (200, {}, body)) as srv:
        res = prep(job(tmp_path, openai_teacher(srv.url)))
    assert res.returncode == 3, res.stderr[-3000:]  # documented: windows unanswered after retries, re-run retries
    assert "Traceback" not in res.stderr
    assert why in res.stderr and "queries failed after retries" in res.stderr
    card = json.loads((tmp_path / "out" / "card.json").read_text())
    assert cached_answers(tmp_path) == 0 and card["counts"]["rows_written"] == 0 and len(card["failed_queries"]) == 5
    no_secret(res, tmp_path)
