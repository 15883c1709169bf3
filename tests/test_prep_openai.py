"""The `openai` teacher against a local fake OpenAI-compatible server, and kill-and-resume.

The server (http.server in a thread, 127.0.0.1, random port) ranks by a relevance number hidden in
each passage, and mixes good, garbled, duplicated, truncated and out-of-range answers with 500s,
429s, malformed JSON and replies slower than the client timeout. It stops itself after a bounded
number of requests or seconds, so a bug can never leave a test spinning.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
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

from lrt.errors import LrtError
from lrt.prep.cache import CallCache
from lrt.prep.job import load_job, run_shard

REPO = Path(__file__).resolve().parents[1]
SECRET = "sk-test-SECRET-0123456789"
_LINE = re.compile(r"^\[(\d+)\] doc (\S+) relevance (\d+)", re.M)


class FakeLLM(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, *, delay: float = 0.0, errors: bool = True, slow_s: float = 1.0, max_requests: int = 3000,
                 lifetime_s: float = 90.0) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.delay, self.errors, self.slow_s, self.max_requests = delay, errors, slow_s, max_requests
        self.lock = threading.Lock()
        self.attempts: Counter = Counter()  # window -> requests received
        self.answered: list[tuple[str, tuple[str, ...]]] = []  # windows given a 200 with a ranking
        self.kinds: Counter = Counter()
        self.auth: set[str] = set()
        self.always_fail: set[str] = set()  # qids whose windows always get 500
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.timer = threading.Timer(lifetime_s, self.shutdown)
        self.timer.daemon = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def __enter__(self) -> "FakeLLM":
        self.thread.start()
        self.timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self.timer.cancel()
        self.shutdown()
        self.server_close()

    def plan(self, window: tuple, attempt: int) -> str:
        """Deterministic per window: transient errors first, then one fixed answer style."""
        h = int(hashlib.sha1(repr(window).encode()).hexdigest(), 16)
        if window[0] in self.always_fail:
            return "500"
        if self.errors and attempt == 1 and h % 9 < 4 and (h % 9 != 2 or h % 27 == 2):
            return ["500", "429", "slow", "badjson"][h % 9]  # slow (costly) only for 1 window in 27
        return ["ok", "ok", "garbled", "dup", "trunc", "oor"][(h // 9) % 6]


class _Handler(BaseHTTPRequestHandler):
    server: FakeLLM

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def _send(self, code: int, body: bytes, headers: dict | None = None) -> None:
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        user = body["messages"][-1]["content"]
        qid = re.search(r"query (\S+?)\.", user).group(1)
        rows = _LINE.findall(user)
        window = (qid, tuple(d for _, d, _ in rows))
        with srv.lock:
            srv.auth.add(self.headers.get("Authorization", ""))
            srv.attempts[window] += 1
            attempt = srv.attempts[window]
            total = sum(srv.attempts.values())
            kind = srv.plan(window, attempt)
            srv.kinds[kind] += 1
        if total > srv.max_requests:
            threading.Thread(target=srv.shutdown, daemon=True).start()
            return self._send(503, b"request budget exhausted")
        if srv.delay:
            time.sleep(srv.delay)
        if kind == "500":
            return self._send(500, b"internal error")
        if kind == "429":
            return self._send(429, b"slow down", {"Retry-After": "0"})
        if kind == "slow":
            time.sleep(srv.slow_s)
        if kind == "badjson":
            return self._send(200, b'{"choices": [')
        best = [int(i) for i, _, _ in sorted(rows, key=lambda r: (-int(r[2]), int(r[0])))]
        text = {"ok": " > ".join(f"[{i}]" for i in best),
                "garbled": "Sure! My ranking: " + ", then ".join(f"[{i}]" for i in best) + ". Hope this helps!",
                "dup": " > ".join(f"[{i}]" for i in best[:3] + best[:2] + best[3:]),
                "trunc": " > ".join(f"[{i}]" for i in best[: len(best) // 2]),
                "oor": " > ".join(f"[{i}]" for i in [99] + best + [42])}.get(kind, " > ".join(f"[{i}]" for i in best))
        with srv.lock:
            srv.answered.append(window)
        out = {"choices": [{"message": {"role": "assistant", "content": text}}],
               "usage": {"prompt_tokens": 100, "completion_tokens": 20}}
        self._send(200, json.dumps(out).encode())


def make_data(d: Path, n_queries: int = 6, n_cands: int = 30) -> dict[str, list[str]]:
    """fullrank-style rows + corpus + queries; returns the ideal ranking per qid."""
    d.mkdir(parents=True, exist_ok=True)
    ideal = {}
    with open(d / "lists.jsonl", "w") as fl, open(d / "corpus.tsv", "w") as fc, open(d / "queries.tsv", "w") as fq:
        for q in range(n_queries):
            qid = f"q{q}"
            docs = [f"{qid}d{k:02d}" for k in range(n_cands)]
            rel = {doc: (k * 7 + q * 3) % 23 for k, doc in enumerate(docs)}
            ideal[qid] = sorted(docs, key=lambda x: (-rel[x], docs.index(x)))
            fl.write(json.dumps({"qid": qid, "initial_list": docs, "final_list": ideal[qid]}) + "\n")
            fq.write(f"{qid}\tquery {qid}\n")
            for doc in docs:
                fc.write(f"{doc}\tdoc {doc} relevance {rel[doc]} about rivers and banks\n")
    return ideal


def write_job(d: Path, url: str, out: Path, **teacher) -> Path:
    job = {"name": "fake-openai", "source": {"kind": "fullrank", "path": str(d / "lists.jsonl"),
                                             "corpus": str(d / "corpus.tsv"), "queries": str(d / "queries.tsv")},
           "teacher": {"kind": "openai", "base_url": url, "model": "fake-gpt", "api_key_env": "LRT_TEST_KEY",
                       "concurrency": 4, "timeout_s": 0.5, "max_retries": 4, "backoff_s": 0.01, **teacher},
           # the fake mixes dup/trunc/oor answers on purpose: allow them (the default fails such a job)
           "labels": {"window": 10, "stride": 5, "mode": "freeze_prefix", "max_invalid_fraction": 1.0},
           "output": {"dir": str(out)}}
    path = d / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv("LRT_TEST_KEY", SECRET)


def test_repairs_and_retries_are_counted_and_no_row_is_lost(tmp_path):
    ideal = make_data(tmp_path / "data")
    with FakeLLM(slow_s=1.0) as srv:
        card = run_shard(load_job(write_job(tmp_path / "data", srv.url, tmp_path / "out")))
    c = card["counts"]
    assert c["rows_written"] == 6 and c["failed_queries"] == 0 and card["failed_queries"] == []
    assert c["calls"] == 6 * 15  # freeze_prefix, N=30, w=10, s=5: 5+4+3+2+1 windows per query
    for key in ("retry_http_5xx", "retry_http_429", "retry_timeout", "retry_bad_response"):
        assert c.get(key, 0) >= 1, (key, c)
    for key in ("duplicates", "missing", "out_of_range"):
        assert c[key] >= 1, (key, c)
    assert c["invalid_responses"] >= srv.kinds["dup"] > 0
    assert srv.auth == {f"Bearer {SECRET}"}
    table = pq.read_table(tmp_path / "out" / "data.parquet").to_pylist()
    assert sorted(r["qid"] for r in table) == sorted(ideal)
    for r in table:
        assert sorted(r["ranking"]) == sorted(ideal[r["qid"]])  # complete permutations, nothing lost
    calls = pq.read_table(tmp_path / "out" / "calls" / "part-00000-of-00001.parquet").to_pylist()
    assert len(calls) == 90 and not any(x["error"] for x in calls)
    # the key is used on the wire but never written anywhere
    for f in (tmp_path / "out").rglob("*"):
        if f.is_file():
            assert SECRET.encode() not in f.read_bytes(), f


def test_failed_queries_are_reported_and_retried_on_rerun(tmp_path):
    make_data(tmp_path / "data", n_queries=4)
    job = write_job(tmp_path / "data", "", tmp_path / "out", max_retries=1)
    with FakeLLM(errors=False) as srv:
        cfg = load_job(job, [f"teacher.base_url={srv.url}"])
        srv.always_fail.add("q2")
        card = run_shard(cfg)
        assert card["failed_queries"] == ["q2"] and card["counts"]["rows_written"] == 3
        first = sum(srv.attempts.values())
        srv.always_fail.clear()
        card = run_shard(cfg)  # a card with failed queries is not "done": re-run retries them only
        assert card["failed_queries"] == [] and card["counts"]["rows_written"] == 4
        assert sum(srv.attempts.values()) - first == 15  # q2's 15 windows; all others from the cache


def test_fatal_http_status_stops_the_job(tmp_path):
    make_data(tmp_path / "data", n_queries=1)
    job = write_job(tmp_path / "data", "http://127.0.0.1:9/v1", tmp_path / "out")
    with FakeLLM(errors=False) as srv:
        cfg = load_job(job, [f"teacher.base_url={srv.url}"])
        srv.RequestHandlerClass = type("H404", (_Handler,), {"do_POST": lambda self: self._send(404, b"no")})
        with pytest.raises(LrtError, match="HTTP 404"):
            run_shard(cfg)


def test_missing_api_key_env_is_a_clear_error(tmp_path, monkeypatch):
    make_data(tmp_path / "data", n_queries=1)
    monkeypatch.delenv("LRT_TEST_KEY")
    with pytest.raises(LrtError, match=r"\$LRT_TEST_KEY"):
        run_shard(load_job(write_job(tmp_path / "data", "http://127.0.0.1:9/v1", tmp_path / "out")))


def _job_cmd(job: Path) -> list[str]:
    return [sys.executable, "-m", "lrt.cli", "prep", str(job)]


def test_sigkill_and_resume_repeats_no_answered_window(tmp_path):
    ideal = make_data(tmp_path / "data", n_queries=8)
    env = {**os.environ, "LRT_TEST_KEY": SECRET, "PYTHONPATH": str(REPO)}
    out = tmp_path / "out"
    with FakeLLM(errors=False, delay=0.03) as srv:
        job = write_job(tmp_path / "data", srv.url, out, concurrency=2, timeout_s=5.0)
        proc = subprocess.Popen(_job_cmd(job), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while len(srv.answered) < 30 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
        # nothing looks finished: no card, no shard, no merged data
        assert not list(out.glob("cards/*.json")) and not (out / "data.parquet").exists()
        assert not list(out.glob("shards/*.parquet"))
        cache = CallCache(next(out.glob("cache/*.sqlite")))
        cached = set(cache.windows())
        cache.close()
        assert len(cached) >= 25
        before = Counter(srv.attempts)
        done = subprocess.run(_job_cmd(job), cwd=REPO, env=env, capture_output=True, timeout=120)
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        second = Counter(srv.attempts) - before
        assert not set(second) & cached  # zero repeated calls for windows already answered
        assert max(second.values()) == 1
    card = json.loads((out / "card.json").read_text())
    assert card["counts"]["cache_hits"] >= len(cached)
    # identical output to an uninterrupted run (the fake teacher is deterministic, like temperature 0)
    with FakeLLM(errors=False) as srv:
        ref = run_shard(load_job(write_job(tmp_path / "data", srv.url, tmp_path / "ref")))
    assert ref["counts"]["rows_written"] == 8
    got = pq.read_table(out / "data.parquet").to_pylist()
    assert got == pq.read_table(tmp_path / "ref" / "data.parquet").to_pylist()
    assert {r["qid"]: sorted(r["ranking"]) for r in got} == {q: sorted(v) for q, v in ideal.items()}
