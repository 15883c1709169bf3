"""Bad `lrt rerank` inputs through the real CLI: one `error:` line naming the flag or file and the
fix, exit code 2, no traceback, and nothing written (problems with outputs, the device or the
export are found before any input is read or any model is loaded)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lrt.cli import main
from lrt.data.prompts import PromptTemplate
from lrt.rerank import RerankerMeta

REPO = Path(__file__).resolve().parents[1]
DOCS = {q: [f"{q}d{i}" for i in range(1, 7)] for q in ("q1", "q2")}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from lrt.testing.tiny import save_tiny_model

    d = save_tiny_model(tmp_path_factory.mktemp("bad") / "model", "chatml")
    RerankerMeta(template=PromptTemplate.preset("compact", max_passage_tokens=12).to_dict(), window=4, stride=2,
                 max_length=512).save(d)
    return Path(d)


@pytest.fixture()
def inputs(tmp_path):
    (tmp_path / "run.trec").write_text("".join(f"{q} Q0 {d} {r} {10 - r} bm25\n" for q, ds in DOCS.items()
                                               for r, d in enumerate(ds, 1)))
    (tmp_path / "topics.tsv").write_text("q1\tquick fox\nq2\tlazy dog\n")
    (tmp_path / "corpus.tsv").write_text("".join(f"{d}\tthe {d} passage about a fox and a dog jumping over text\n"
                                                 for ds in DOCS.values() for d in ds))
    return tmp_path


def _copy_export(src: Path, dst: Path, drop: tuple[str, ...] = (), meta: str | None = None) -> Path:
    shutil.copytree(src, dst)
    for f in drop:
        (dst / f).unlink(missing_ok=True)
    if meta is not None:
        (dst / "lrt_reranker.json").write_text(meta)
    return dst


def _meta(**change) -> str:
    d = {"template": PromptTemplate.preset("compact").to_dict(), "window": 4, "stride": 2, "max_length": 512, **change}
    return json.dumps(d)


TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")

# (id, argv edits: callable(tmp, model_dir) -> (model, extra args), text the error must hold)
CASES = [
    ("stats_under_a_file", lambda t, m: (m, ["--stats", str(t / "topics.tsv" / "stats.json")]),
     "--stats .*is not a directory"),
    ("out_is_a_directory", lambda t, m: (m, ["--out", str(t)]), r"--out .*is a directory"),
    ("stats_is_a_directory", lambda t, m: (m, ["--stats", str(t)]), r"--stats .*is a directory"),
    ("device_not_a_device", lambda t, m: (m, ["--device", "gpu-please"]), "not a device"),
    ("device_index_out_of_range_or_no_cuda", lambda t, m: (m, ["--device", "cuda:7"]), "CUDA"),
    ("export_without_tokenizer", lambda t, m: (_copy_export(m, t / "notok", TOKENIZER), []), "no tokenizer files"),
    ("meta_invalid_json", lambda t, m: (_copy_export(m, t / "badjson", meta="{\"window\": 4,"), []), "invalid JSON"),
    ("meta_not_an_object", lambda t, m: (_copy_export(m, t / "list", meta="[1, 2]"), []), "expected a JSON object"),
    ("meta_window_not_int", lambda t, m: (_copy_export(m, t / "win", meta=_meta(window="twenty")), []),
     "window='twenty'"),
    ("meta_missing_keys", lambda t, m: (_copy_export(m, t / "miss", meta=json.dumps({"window": 4})), []),
     r"missing \['template', 'stride', 'max_length'\]"),
    ("meta_bad_template", lambda t, m: (_copy_export(m, t / "tpl", meta=_meta(template={"prefix": "x"})), []),
     "bad prompt template"),
    ("no_meta_at_all", lambda t, m: (_copy_export(m, t / "nometa", ("lrt_reranker.json",)), []), "no lrt_reranker.json"),
    ("model_not_a_directory", lambda t, m: (t / "nope", []), "not a directory"),
    ("corrupt_weights", lambda t, m: (_copy_export(m, t / "w", ()), ["--corrupt"]), "cannot load the model weights"),
    ("max_length_generate", lambda t, m: (m, ["--mode", "generate", "--max-length", "40"]),
     r"query q1: .*max_length=40 .*raise --max-length"),
    ("max_length_first_token", lambda t, m: (m, ["--max-length", "30"]), r"query q1: .*max_length=30 .*--max-length"),
    ("openai_without_base_url", lambda t, m: (m, ["--backend", "openai"]), "needs --base-url"),
    ("openai_name_without_export", lambda t, m: ("served-name", ["--backend", "openai", "--base-url",
                                                                 "http://127.0.0.1:9/v1"]), "give --export DIR"),
    ("openai_bad_url", lambda t, m: (m, ["--backend", "openai", "--base-url", "localhost:8000"]),
     "--base-url 'localhost:8000' is not an http"),
    ("requests_and_run", lambda t, m: (m, ["--requests", str(t / "run.trec")]), "not both"),
    ("nproc_zero", lambda t, m: (m, ["--nproc-per-node", "0"]), "--nproc-per-node must be >= 1"),
    ("top_k_zero", lambda t, m: (m, ["--top-k", "0"]), "--top-k must be >= 1"),
]


@pytest.mark.parametrize("case_id,edit,expect", CASES, ids=[c[0] for c in CASES])
def test_bad_rerank_input_is_one_clear_error(case_id, edit, expect, model_dir, inputs, capsys):
    if case_id == "device_index_out_of_range_or_no_cuda" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    model, extra = edit(inputs, model_dir)
    if "--corrupt" in extra:
        extra = []
        (Path(model) / "model.safetensors").write_bytes(b"not a safetensors file")
    out = inputs / "out.trec"
    argv = ["rerank", "--model", str(model), "--run", str(inputs / "run.trec"), "--queries", str(inputs / "topics.tsv"),
            "--corpus", str(inputs / "corpus.tsv"), "--out", str(out), *extra]
    if "--requests" in extra:
        pass  # both given on purpose
    rc = main(argv)
    cap = capsys.readouterr()
    text = cap.out + cap.err
    assert rc == 2, text
    assert "Traceback" not in text
    errors = [x for x in cap.err.splitlines() if x.startswith("error:")]
    assert len(errors) == 1, cap.err
    import re

    assert re.search(expect, errors[0]), errors[0]
    assert not out.exists()  # nothing written


def test_stats_in_a_missing_directory_is_created(model_dir, inputs, capsys):
    stats = inputs / "new" / "dir" / "stats.json"
    assert main(["rerank", "--model", str(model_dir), "--run", str(inputs / "run.trec"), "--queries",
                 str(inputs / "topics.tsv"), "--corpus", str(inputs / "corpus.tsv"), "--out",
                 str(inputs / "o" / "out.trec"), "--stats", str(stats), "--top-k", "3"]) == 0
    assert json.loads(stats.read_text())["queries"] == 2 and (inputs / "o" / "out.trec").exists()


def test_real_process_prints_no_traceback(model_dir, inputs, tmp_path):
    """The real `lrt rerank` process (not only `main()`): malformed lrt_reranker.json -> one error line, exit 2."""
    bad = _copy_export(model_dir, tmp_path / "bad", meta="{oops")
    p = subprocess.run([sys.executable, "-m", "lrt.cli", "rerank", "--model", str(bad), "--run",
                        str(inputs / "run.trec"), "--queries", str(inputs / "topics.tsv"), "--corpus",
                        str(inputs / "corpus.tsv"), "--out", str(inputs / "out.trec")],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stdout + p.stderr
    assert [x for x in p.stderr.splitlines() if x.startswith("error:")] == [
        x for x in p.stderr.splitlines() if "invalid JSON" in x]
