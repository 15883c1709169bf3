"""Bad prep input, hostile servers, kills and concurrent runs: `lrt prep` as a user runs it.

Every case drives the real CLI in a subprocess and asserts one `error:` line, exit code 2 and no
traceback; the key never reaches any file or stream; SIGKILL at random points never repeats an
answered window; a second prep on the same shard is refused while the first one holds it.
"""
from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from test_prep_openai import FakeLLM, make_data, write_job

REPO = Path(__file__).resolve().parents[1]
KEY = "sk-echo-" + "7f3a9c1e5b2d4068a1c3e5f7091b2d4f"  # distinctive: any 8 characters of it are searched


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "LRT_TEST_KEY": KEY, **extra}


def lrt(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lrt.cli", *args], cwd=REPO, env=env or _env(),
                          capture_output=True, text=True, timeout=timeout)


def inproc(capsys, monkeypatch, *args: str) -> subprocess.CompletedProcess:
    """`lrt.cli.main(args)` in this process (fast), shaped like a finished subprocess."""
    from lrt.cli import main

    monkeypatch.setenv("LRT_TEST_KEY", KEY)
    rc = main(list(args))
    cap = capsys.readouterr()
    return subprocess.CompletedProcess(args, rc, cap.out, cap.err)


def assert_clean_error(res: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit 2, exactly one `error:` line naming what to fix, never a traceback."""
    out = res.stdout + res.stderr
    assert "Traceback" not in out, out[-3000:]
    assert res.returncode == 2, (res.returncode, out[-3000:])
    errors = [ln for ln in res.stderr.splitlines() if "error:" in ln]
    assert len(errors) == 1, res.stderr[-3000:]
    for n in needles:
        assert n in res.stderr, (n, res.stderr[-3000:])
    return res.stderr


def scores_job(d: Path, out: Path, **teacher) -> Path:
    job = {"name": "spy", "source": {"kind": "fullrank", "path": str(d / "lists.jsonl"),
                                     "corpus": str(d / "corpus.tsv"), "queries": str(d / "queries.tsv")},
           "teacher": {"kind": "scores", "format": "fullrank", "path": str(d / "lists.jsonl"), **teacher},
           "labels": {"window": 10, "stride": 5, "mode": "freeze_prefix"}, "output": {"dir": str(out)}}
    path = d / "scores-job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


# ---- job errors ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("prepdata")
    make_data(d, n_queries=2, n_cands=12)
    return d


JOB_CASES = [  # (id, overrides, key the message must name)
    ("ftp_base_url", ["teacher.base_url=ftp://example.org/v1", "teacher.api_key_env=null"], "teacher.base_url"),
    ("no_scheme_base_url", ["teacher.base_url=localhost:8000/v1", "teacher.api_key_env=null"], "teacher.base_url"),
    ("empty_base_url", ["teacher.base_url=''", "teacher.api_key_env=null"], "teacher.base_url"),
    ("missing_key_env", ["teacher.api_key_env=LRT_NOT_SET_ANYWHERE"], "$LRT_NOT_SET_ANYWHERE"),
]


@pytest.mark.parametrize("case, overrides, needle", JOB_CASES, ids=[c[0] for c in JOB_CASES])
def test_openai_job_errors_are_one_clean_line(data, tmp_path, capsys, monkeypatch, case, overrides, needle):
    job = write_job(data, "http://127.0.0.1:9/v1", tmp_path / "out")
    res = inproc(capsys, monkeypatch, "prep", str(job), *overrides)
    assert_clean_error(res, needle)
    assert not list((tmp_path / "out").glob("cache/*.sqlite"))  # refused before any work


def test_base_url_is_checked_by_prep_check_too(data, tmp_path, capsys, monkeypatch):
    job = write_job(data, "ftp://example.org/v1", tmp_path / "out", api_key_env=None)
    assert_clean_error(inproc(capsys, monkeypatch, "prep", str(job), "--check"), "teacher.base_url")


@pytest.mark.parametrize("case", ["missing", "directory"])
def test_scores_teacher_path_is_reported_as_a_teacher_problem(data, tmp_path, capsys, monkeypatch, case):
    job = scores_job(data, tmp_path / "out")
    bad = tmp_path / "nope.jsonl"
    if case == "directory":
        bad.mkdir()
    err = assert_clean_error(inproc(capsys, monkeypatch, "prep", str(job), f"teacher.path={bad}"),
                             "teacher.path", str(bad))
    assert "source" not in err


def _files(tmp: Path) -> dict[str, Path]:
    (tmp / "cachedir").mkdir()
    (tmp / "garbage.sqlite").write_bytes(b"not a database at all" * 100)
    (tmp / "run5.txt").write_text("q0 Q0 q0d00 1 1.0\n")
    (tmp / "out-file").write_text("x")
    return {k: tmp / k for k in ("cachedir", "garbage.sqlite", "run5.txt", "out-file")}


MORE_CASES = [  # (id, overrides with {file} placeholders, words the message must hold)
    ("output_dir_is_a_file", ["output.dir={out-file}"], ["output.dir", "is a file"]),
    ("cache_path_is_a_directory", ["cache.path={cachedir}"], ["cachedir: cannot open the call cache"]),
    ("cache_is_not_sqlite", ["cache.path={garbage.sqlite}"], ["garbage.sqlite: cannot open the call cache",
                                                              "file is not a database"]),
    ("scores_run_bad_columns", ["teacher.format=run", "teacher.path={run5.txt}"], ["run5.txt:1", "6 columns"]),
    ("scores_not_a_qrels_file", ["teacher.format=qrels"], ["lists.jsonl:1", "4 columns"]),
]


@pytest.mark.parametrize("case, overrides, needles", MORE_CASES, ids=[c[0] for c in MORE_CASES])
def test_more_prep_job_errors(data, tmp_path, capsys, monkeypatch, case, overrides, needles):
    files = _files(tmp_path)
    ov = list(overrides)
    for k, v in files.items():
        ov = [o.replace("{" + k + "}", str(v)) for o in ov]
    job = scores_job(data, tmp_path / "out")
    assert_clean_error(inproc(capsys, monkeypatch, "prep", str(job), *ov), *needles)


# ---- the key never leaks ------------------------------------------------------------------------

class _Echo(BaseHTTPRequestHandler):
    """Echoes the request headers back, the way some proxies and debug servers do."""

    mode = "400-json"

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        headers = dict(self.headers.items())
        if self.mode == "200-content":
            text = f"[2] > [1] > [3] (request had Authorization: {headers.get('Authorization')})"
            code, body = 200, json.dumps({"choices": [{"message": {"content": text}}]})
        elif self.mode == "400-text":  # a bare key, placed so that a 200-character excerpt ends inside it
            lead = "Incorrect API key provided: "
            code, body = 400, "x" * (200 - len(lead) - 20) + lead + headers.get("Authorization", "")[len("Bearer "):]
        else:
            code = 401 if self.mode == "401-json" else 400
            key = headers.get("Authorization", "").removeprefix("Bearer ")
            body = json.dumps({"error": {"message": f"Incorrect API key provided: {key}", "request_headers": headers}})
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _leaks(blob: bytes) -> list[str]:
    secret = KEY[len("sk-echo-"):]
    return [secret[i:i + 8] for i in range(len(secret) - 7) if secret[i:i + 8].encode() in blob]


@pytest.mark.parametrize("mode, rc", [("400-json", 3), ("400-text", 3), ("401-json", 2), ("200-content", 0)])
def test_an_echoing_server_never_gets_the_key_into_files_or_logs(tmp_path, mode, rc):
    d = tmp_path / "data"
    make_data(d, n_queries=2, n_cands=3)
    handler = type("Echo", (_Echo,), {"mode": mode})
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        job = write_job(d, f"http://127.0.0.1:{srv.server_address[1]}/v1", tmp_path / "out", max_retries=0)
        res = lrt("prep", str(job))
    finally:
        srv.shutdown()
        srv.server_close()
    out = res.stdout + res.stderr
    assert res.returncode == rc and "Traceback" not in out, out[-3000:]
    assert not _leaks(out.encode()), out[-3000:]
    assert "REDACTED" in out or mode in ("200-content", "401-json")  # the message still shows the server's words
    files = [f for f in (tmp_path / "out").rglob("*") if f.is_file()]
    assert files
    for f in files:  # cards, call logs, the SQLite cache (and its WAL), shards
        assert not _leaks(f.read_bytes()), f
    if mode.startswith("400"):
        calls = pq.read_table(tmp_path / "out" / "calls" / "part-00000-of-00001.parquet").to_pylist()
        assert calls and all("HTTP 400" in c["error"] and "REDACTED" in c["error"] for c in calls)


# ---- SIGKILL at random points -------------------------------------------------------------------

def _spy_log(path: Path) -> tuple[Counter, set[str], set[str]]:
    """(calls per window, windows answered+committed, windows started but unanswered) of one run."""
    starts, done = Counter(), set()
    if path.exists():
        for line in path.read_text().splitlines():
            kind, _, key = line.partition(" ")
            if kind == "start":
                starts[key] += 1
            elif kind == "done":
                done.add(key)
    return starts, done, set(starts) - done


@pytest.mark.slow
def test_sigkill_at_random_points_repeats_no_answered_call(tmp_path):
    d = tmp_path / "data"
    make_data(d, n_queries=24, n_cands=20)  # freeze_prefix 20/10/5: 3 + 2 + 1 windows per query = 144 calls
    job = scores_job(d, tmp_path / "out", delay_s=0.004)
    cmd = [sys.executable, str(REPO / "tests" / "_prep_spy.py"), str(job)]
    rng = random.Random(11)
    total = 24 * 6
    thresholds = sorted(rng.sample(range(1, total), 4)) + [total]  # the last lands in the output writing
    answered: set[str] = set()
    calls: Counter = Counter()
    for k, threshold in enumerate(thresholds):
        log = tmp_path / f"spy{k}.log"
        proc = subprocess.Popen(cmd, cwd=REPO, env=_env(LRT_SPY_LOG=str(log)), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            starts, done, _ = _spy_log(log)
            if len(done) + len(answered) >= threshold:
                break
            time.sleep(0.003)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        starts, done, _ = _spy_log(log)
        repeated = set(starts) & answered
        assert not repeated, f"kill {k}: {len(repeated)} answered windows asked again"
        calls.update(starts)
        answered |= done
    log = tmp_path / "final.log"
    res = subprocess.run(cmd, cwd=REPO, env=_env(LRT_SPY_LOG=str(log)), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    starts, done, _ = _spy_log(log)
    assert not set(starts) & answered  # zero repeated calls for answered windows, after 5 kills
    calls.update(starts)
    repeats = sum(n - 1 for n in calls.values())
    print(f"5 kills: {sum(calls.values())} teacher calls for {len(calls)} windows, {repeats} in flight at a kill")
    assert len(calls) == total and repeats <= len(thresholds)  # only a window in flight at a kill (1 per kill)
    # identical output to an uninterrupted run
    ref = subprocess.run([*cmd[:2], str(scores_job(d, tmp_path / "ref"))], cwd=REPO,
                         env=_env(LRT_SPY_LOG=str(tmp_path / "ref.log")), capture_output=True, text=True, timeout=120)
    assert ref.returncode == 0, ref.stderr[-3000:]
    assert sum(_spy_log(tmp_path / "ref.log")[0].values()) == total
    got, want = (pq.read_table(p / "data.parquet").to_pylist() for p in (tmp_path / "out", tmp_path / "ref"))
    assert got == want and len(got) == 24
    strip = lambda rows: [{k: v for k, v in r.items() if k != "cached"} for r in rows]  # noqa: E731
    got, want = (pq.read_table(p / "calls" / "part-00000-of-00001.parquet").to_pylist()
                 for p in (tmp_path / "out", tmp_path / "ref"))
    assert strip(got) == strip(want)


# ---- two preps on one output dir ----------------------------------------------------------------

@pytest.mark.slow
def test_a_second_prep_on_the_same_shard_is_refused_and_nothing_is_paid_twice(tmp_path):
    d = tmp_path / "data"
    make_data(d, n_queries=6, n_cands=20)  # 6 x 6 = 36 windows
    with FakeLLM(errors=False, delay=0.05) as srv:
        job = write_job(d, srv.url, tmp_path / "out", concurrency=2, timeout_s=5.0)
        first = subprocess.Popen([sys.executable, "-m", "lrt.cli", "prep", str(job)], cwd=REPO, env=_env(),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while len(srv.answered) < 4 and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert first.poll() is None, "the first prep finished before the second could start"
        second = lrt("prep", str(job))
        err = assert_clean_error(second, f"pid {first.pid}", f"host {socket.gethostname()}", "part-00000-of-00001")
        assert re.search(r"already being prepared", err)
        out, errs = first.communicate(timeout=120)
        assert first.returncode == 0, errs[-3000:]
        assert len(srv.attempts) == 36 and max(srv.attempts.values()) == 1  # no paid duplicate
        again = lrt("prep", str(job))  # after the holder exited the lock is free: a finished no-op
        assert again.returncode == 0, again.stderr[-3000:]
        assert sum(srv.attempts.values()) == 36


def test_teacher_model_and_prompt_tokenizer_that_cannot_load(data, tmp_path, capsys, monkeypatch, tiny_model_dir):
    import shutil

    notok = tmp_path / "notok"
    shutil.copytree(tiny_model_dir, notok)
    for f in notok.glob("tokenizer*"):
        f.unlink()
    job = yaml.safe_load(scores_job(data, tmp_path / "out").read_text())
    job["teacher"] = {"kind": "hf", "model": str(notok)}
    path = tmp_path / "hf.yaml"
    path.write_text(yaml.safe_dump(job))
    assert_clean_error(inproc(capsys, monkeypatch, "prep", str(path)), f"teacher.model '{notok}': cannot load")
    oa = write_job(data, "http://127.0.0.1:9/v1", tmp_path / "out2")
    assert_clean_error(inproc(capsys, monkeypatch, "prep", str(oa), f"prompt.tokenizer={notok}",
                              "prompt.max_passage_tokens=20"), "prompt.tokenizer", "cannot load a tokenizer")
