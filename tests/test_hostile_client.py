"""The OpenAI-compatible client against a misbehaving server, through `lrt rerank --backend openai`:
redirects (to another origin, 301/302/303/307/308) are refused with one error naming the target and
the key never reaches it, a POST never becomes a GET; malformed 200 answers (`logprobs: [1, 2]`,
`choices: ["A"]`, `usage: [1]`, a string `message`, `Infinity`/`NaN`/+50 logprobs) are retried and
then reported in one `error:` line; `Retry-After: -5`/`nan`/junk never reaches `time.sleep`. Every
case: exit 2 (or 0 where the answer is good), no traceback, no key in any stream or written file."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lrt.io.openai_client import retry_after_s
from lrt.testing.hostile_server import ScriptedServer, completion

REPO = Path(__file__).resolve().parents[1]
KEY = "sk-hostile-0123456789abcdef"
GOOD = completion("A", {"A": -0.1, "B": -1.0, "C": -2.5})
_IDS: dict[str, int] = {}  # identifier -> token id of the export's tokenizer (set by the `export` fixture)


def Server(script):  # noqa: N802 - reads like the class it builds
    """The scripted server answering identifiers by token id, as vLLM's return_tokens_as_token_ids does."""
    return ScriptedServer(script, token_ids=_IDS)


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    from lrt.data.prompts import PromptTemplate
    from lrt.rerank import RerankerMeta
    from lrt.testing.tiny import save_tiny_model

    d = save_tiny_model(tmp_path_factory.mktemp("hc") / "model", "chatml", seed=3)
    RerankerMeta(template=PromptTemplate.preset("compact", max_passage_tokens=12).to_dict(), window=3, stride=1,
                 max_length=512).save(d)
    from transformers import AutoTokenizer

    from lrt.data.collate import identifier_token_ids

    tok = AutoTokenizer.from_pretrained(d)
    _IDS.update(zip("ABC", identifier_token_ids(tok, PromptTemplate.preset("compact", max_passage_tokens=12), 3)))
    return d


def _inputs(d: Path) -> None:
    (d / "topics.tsv").write_text("q1\tquick fox\n")
    (d / "corpus.tsv").write_text("".join(f"d{i}\tthe passage {i} about a fox\n" for i in range(3)))
    (d / "run.trec").write_text("".join(f"q1 Q0 d{i} {i + 1} {9 - i}.0 bm25\n" for i in range(3)))
    (d / "out.trec").write_text("earlier run\n")


def rerank(export: Path, d: Path, url: str, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), "LRT_HOSTILE_KEY": KEY}
    return subprocess.run([sys.executable, "-m", "lrt.cli", "rerank", "--model", str(export), "--backend", "openai",
                           "--base-url", url, "--api-key-env", "LRT_HOSTILE_KEY", "--max-retries", "1", "--run",
                           "run.trec", "--queries", "topics.tsv", "--corpus", "corpus.tsv", "--out", "out.trec",
                           "--stats", "stats.json", *extra], cwd=d, env=env, capture_output=True, text=True, timeout=300)


def assert_clean_failure(res: subprocess.CompletedProcess, d: Path, *needles: str) -> None:
    err = res.stderr
    assert res.returncode == 2, (res.returncode, err[-2000:])
    assert "Traceback" not in err and "Traceback" not in res.stdout
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], lines[0]
    assert (d / "out.trec").read_text() == "earlier run\n"  # the earlier file is intact
    no_secret(res, d)


def no_secret(res: subprocess.CompletedProcess, d: Path) -> None:
    assert KEY not in res.stderr and KEY not in res.stdout
    for f in d.rglob("*"):
        if f.is_file():
            assert KEY.encode() not in f.read_bytes(), f


@pytest.mark.slow  # 10 `lrt rerank` subprocesses, ~5 s each
@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("origin", ["other", "same"])
def test_redirects_are_refused_and_the_key_never_leaves(export, tmp_path, code, origin):
    _inputs(tmp_path)
    with Server(lambda n, m, p, b: (200, {}, GOOD)) as other:
        with Server(lambda n, m, p, b: (200, {}, GOOD)) as srv:
            target = (other.url if origin == "other" else srv.url) + "/elsewhere/completions"
            srv.script = lambda n, m, p, b: ((code, {"Location": target}, b"{}") if p.endswith("/v1/completions")
                                             else (200, {}, GOOD))
            res = rerank(export, tmp_path, srv.url)
            assert_clean_failure(res, tmp_path, "redirects this POST", f"HTTP {code}", "/elsewhere/completions")
            assert [s["method"] for s in srv.seen] == ["POST"]  # once: a redirect is not retried, never a GET
            assert other.seen == [] and all(s["path"].endswith("/v1/completions") for s in srv.seen)


MALFORMED = {
    "logprobs_list": (json.dumps({"choices": [{"index": 0, "text": "A", "logprobs": [1, 2]}]}).encode(), None),
    "choices_strings": (json.dumps({"choices": ["A"]}).encode(), None),
    "usage_list": (completion("A", {"A": -0.1, "B": -1.0, "C": -2.0}, usage=[1]), "usage is list"),
    "usage_negative": (completion("A", {"A": -0.1, "B": -1.0, "C": -2.0}, usage={"prompt_tokens": -3}), "usage.prompt"),
    "answer_is_list": (b"[1, 2]", "not an object"),
    "not_json": (b"<html>oops</html>", None),
    "logprob_infinity": (completion("A", {"A": float("inf"), "B": -1.0}), "Infinity"),
    "logprob_nan": (completion("A", {"A": float("nan"), "B": -1.0}), "NaN"),
    "logprob_plus_50": (completion("A", {"A": 50.0, "B": -1.0}), "50.0"),
    "token_logprob_positive": (json.dumps({"choices": [{"index": 0, "text": "A", "logprobs": {
        "tokens": ["A"], "token_logprobs": [3.0], "top_logprobs": [{"A": -0.1}]}}]}).encode(), "3.0"),
}


@pytest.mark.slow  # one `lrt rerank` subprocess per case, ~5.5 s each
@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_200_answers_are_retried_then_one_error(export, tmp_path, case):
    _inputs(tmp_path)
    body, why = MALFORMED[case]
    with Server(lambda n, m, p, b: (200, {}, body)) as srv:
        res = rerank(export, tmp_path, srv.url)
    assert_clean_failure(res, tmp_path, "bad_response", *([why] if why else []))
    assert len(srv.seen) == 2  # --max-retries 1: tried twice, then reported


@pytest.mark.slow  # 7 `lrt rerank` subprocesses, ~6 s each
@pytest.mark.parametrize("value", ["-5", "nan", "inf", "-inf", "soon", "1e400", "Wed, 21 Oct 2015 07:28:00 GMT"])
def test_odd_retry_after_never_reaches_sleep(export, tmp_path, value):
    _inputs(tmp_path)
    script = lambda n, m, p, b: (503, {"Retry-After": value}, b'{"error": "busy"}') if n == 1 else (200, {}, GOOD)  # noqa: E731
    with Server(script) as srv:
        res = rerank(export, tmp_path, srv.url)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert (tmp_path / "out.trec").read_text().count("q1 Q0") == 3
    no_secret(res, tmp_path)


def test_retry_after_parsing_table():
    cap = 60.0
    table = {"-5": None, "nan": None, "inf": None, "junk": None, "": None, None: None, "0": 0.0, "2.5": 2.5,
             "1e9": cap, "Wed, 21 Oct 2015 07:28:00 GMT": 0.0}
    for v, want in table.items():
        assert retry_after_s(v, cap) == want, v
